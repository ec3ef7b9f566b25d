//! Networks with their leases and (vlan networks) flow rules, security groups, and a VM's NICs.

use crate::vms::vm_path;
use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::{
    FlowRule, FlowRuleSpec, FlowRuleView, LeaseView, NetworkSpec, NetworkView, NicSpec, NicUpdate, SecurityGroup,
    SecurityGroupSpec, Vm,
};

fn network_path(name: &str) -> String {
    format!("/api/v1/networks/{}", encode(name))
}

fn group_path(name: &str) -> String {
    format!("/api/v1/security-groups/{}", encode(name))
}

fn nic_path(vm: &str, nic: &str) -> String {
    format!("{}/nics/{}", vm_path(vm), encode(nic))
}

/// Networks, their leases, security groups and VMs' NICs: `client.networks()`.
#[derive(Clone, Copy)]
pub struct Networks<'a> {
    client: &'a Client,
}

impl Client {
    /// Networks, their leases, security groups and VMs' NICs.
    pub fn networks(&self) -> Networks<'_> {
        Networks { client: self }
    }
}

impl Networks<'_> {
    pub async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkView, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/networks", spec).await
    }

    pub async fn list_networks(&self) -> Result<Vec<NetworkView>, ClientError> {
        self.client.get("/api/v1/networks").await
    }

    pub async fn get_network(&self, name: &str) -> Result<NetworkView, ClientError> {
        self.client.get(&network_path(name)).await
    }

    pub async fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.client.delete(&network_path(name)).await
    }

    /// Addresses given to NICs on the network, and whether the guests took them.
    pub async fn network_leases(&self, name: &str) -> Result<Vec<LeaseView>, ClientError> {
        self.client.get(&format!("{}/leases", network_path(name))).await
    }

    /// Adds a flow rule to a vlan network (administrators).
    pub async fn add_flow_rule(&self, network: &str, spec: &FlowRuleSpec) -> Result<FlowRule, ClientError> {
        self.client.call_with(Method::POST, &format!("{}/flows", network_path(network)), spec).await
    }

    /// A vlan network's flow rules with the switch's counters.
    pub async fn list_flow_rules(&self, network: &str) -> Result<Vec<FlowRuleView>, ClientError> {
        self.client.get(&format!("{}/flows", network_path(network))).await
    }

    pub async fn delete_flow_rule(&self, network: &str, id: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("{}/flows/{}", network_path(network), encode(id))).await
    }

    pub async fn create_security_group(&self, spec: &SecurityGroupSpec) -> Result<SecurityGroup, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/security-groups", spec).await
    }

    pub async fn list_security_groups(&self) -> Result<Vec<SecurityGroup>, ClientError> {
        self.client.get("/api/v1/security-groups").await
    }

    pub async fn get_security_group(&self, name: &str) -> Result<SecurityGroup, ClientError> {
        self.client.get(&group_path(name)).await
    }

    /// Replaces a group's description and rules (live on every NIC using it).
    pub async fn replace_security_group(
        &self,
        name: &str,
        spec: &SecurityGroupSpec,
    ) -> Result<SecurityGroup, ClientError> {
        self.client.call_with(Method::PUT, &group_path(name), spec).await
    }

    pub async fn delete_security_group(&self, name: &str) -> Result<(), ClientError> {
        self.client.delete(&group_path(name)).await
    }

    /// Adds a NIC to a VM (hot-plugged when it runs).
    pub async fn attach_nic(&self, vm: &str, nic: &NicSpec) -> Result<Vm, ClientError> {
        self.client.call_with(Method::POST, &format!("{}/nics", vm_path(vm)), nic).await
    }

    /// Changes a NIC's security groups or limits (live).
    pub async fn update_nic(&self, vm: &str, nic: &str, update: &NicUpdate) -> Result<Vm, ClientError> {
        self.client.call_with(Method::PATCH, &nic_path(vm, nic), update).await
    }

    /// Removes a NIC (hot-unplugged from a running VM).
    pub async fn detach_nic(&self, vm: &str, nic: &str) -> Result<Vm, ClientError> {
        self.client.delete_json(&nic_path(vm, nic)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_into_their_paths() {
        assert_eq!(nic_path("a/b", "nic0"), "/api/v1/vms/a%2Fb/nics/nic0");
        assert_eq!(group_path("web ssh"), "/api/v1/security-groups/web%20ssh");
        assert_eq!(network_path("lan"), "/api/v1/networks/lan");
    }
}

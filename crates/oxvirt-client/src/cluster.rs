//! The cluster (etcd store): its hosts, maintenance, leaving, the placement and rebalancing
//! policy, and rebalancing.

use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::{ClusterPolicy, HostView, Maintenance, RebalanceView, Task};

fn host_path(host: &str) -> String {
    format!("/api/v1/cluster/hosts/{}", encode(host))
}

/// The cluster: hosts, maintenance, leaving, the placement policy, rebalancing: `client.cluster()`.
#[derive(Clone, Copy)]
pub struct Cluster<'a> {
    client: &'a Client,
}

impl Client {
    /// The cluster: hosts, maintenance, leaving, the placement policy, rebalancing.
    pub fn cluster(&self) -> Cluster<'_> {
        Cluster { client: self }
    }
}

impl Cluster<'_> {
    /// The cluster's hosts: online or not, the leader, their VMs.
    pub async fn cluster_hosts(&self) -> Result<Vec<HostView>, ClientError> {
        self.client.get("/api/v1/cluster/hosts").await
    }

    /// Takes a host out of the cluster (refused while it has VMs).
    pub async fn leave_cluster(&self, host: &str) -> Result<(), ClientError> {
        self.client.delete(&host_path(host)).await
    }

    /// Puts a host in maintenance (`on`: its running VMs migrate away, in the drain's task) or out of it.
    pub async fn set_maintenance(&self, host: &str, on: bool) -> Result<Vec<Task>, ClientError> {
        self.client.call_with(Method::PUT, &format!("{}/maintenance", host_path(host)), &Maintenance { on }).await
    }

    /// HA: fences a host by hand (it kills its HA VMs, which are recovered on other hosts).
    pub async fn fence_host(&self, host: &str) -> Result<oxvirt_model::Fenced, ClientError> {
        self.client.call(Method::POST, &format!("{}/fence", host_path(host)), None).await
    }

    /// Ends a host's fence.
    pub async fn unfence_host(&self, host: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("{}/fence", host_path(host))).await
    }

    pub async fn cluster_policy(&self) -> Result<ClusterPolicy, ClientError> {
        self.client.get("/api/v1/cluster/policy").await
    }

    pub async fn set_cluster_policy(&self, policy: &ClusterPolicy) -> Result<ClusterPolicy, ClientError> {
        self.client.call_with(Method::PUT, "/api/v1/cluster/policy", policy).await
    }

    /// The rebalancing plan now.
    pub async fn rebalance_plan(&self) -> Result<RebalanceView, ClientError> {
        self.client.get("/api/v1/cluster/rebalance").await
    }

    /// Rebalances now: the plan's first migrations start (the plan and what started).
    pub async fn rebalance(&self) -> Result<RebalanceView, ClientError> {
        self.client.call(Method::POST, "/api/v1/cluster/rebalance", None).await
    }
}

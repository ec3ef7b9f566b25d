//! The small text formats users write: sizes (`512MiB`), bit rates (`20mbit`), CPU lists
//! (`0-3,8`), port ranges, address ranges, subnets, names, MACs, paths.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oxvirt_model::*;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = s.parse::<ByteSize>();
    let _ = rate::parse(s);
    if let Ok(c) = parse_cpulist(s) {
        let _ = format_cpulist(&c);
    }
    let _ = parse_ports(s);
    let _ = parse_range(s);
    if let Ok(n) = s.parse::<Ipv4Net>() {
        let _ = (n.hosts(), n.broadcast(), n.netmask());
    }
    let _ = validate_name("f", s);
    let _ = validate_mac("f", s);
    let _ = validate_ifname("f", s);
    let _ = validate_host_path("f", s);
    let _ = parse_volume_ref("f", s);
});

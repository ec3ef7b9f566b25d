//! `oxvirt-mpath LISTEN PATH...`: relays QEMU's NBD connections on the Unix socket LISTEN through
//! the first of the NBD server sockets PATH... that answers (see the library's docs).

fn main() {
    let args: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    if args.len() < 2 {
        eprintln!("usage: oxvirt-mpath LISTEN PATH [PATH...]");
        std::process::exit(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxvirt-mpath: {e}");
            std::process::exit(1);
        }
    };
    let (listen, paths) = (args[0].clone(), args[1..].to_vec());
    if let Err(e) = rt.block_on(oxvirt_mpath::run(&listen, paths)) {
        eprintln!("oxvirt-mpath: {}: {e}", listen.display());
        std::process::exit(1);
    }
}

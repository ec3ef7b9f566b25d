//! `oxvirt pool ...` and `oxvirt volume ...`.

use crate::args::{size, word};
use crate::output::{print_json, table, Output};
use clap::Subcommand;
use oxvirt_client::{Client, ClientError, Cloned};
use oxvirt_model::{ByteSize, CloneRequest, ExportRequest, ImportRequest, PoolSpec, PoolView, Volume, VolumeSpec};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Create a pool on a host directory.
    Create {
        name: String,
        #[arg(long)]
        path: PathBuf,
        /// dir, shared-dir or nbd (served by a supervised qemu-storage-daemon).
        #[arg(long, default_value = "dir")]
        kind: String,
        /// For nbd pools: paths (export daemons) to each volume; more than 1 means multipath.
        #[arg(long, default_value_t = 1)]
        paths: u8,
        /// How far virtual sizes may exceed the pool's size.
        #[arg(long, default_value_t = 2.0)]
        overcommit: f64,
        /// In a cluster: the pool's directory on one host, HOST=PATH, where it is not --path
        /// (repeat for more hosts).
        #[arg(long = "host-path")]
        host_paths: Vec<String>,
    },
    /// List pools with their capacity.
    List,
    Show {
        name: String,
    },
    /// Delete an empty pool (its directory stays).
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a thin volume: POOL/NAME --size 10GiB.
    Create {
        volume: String,
        #[arg(long)]
        size: String,
        #[arg(long, default_value = "qcow2")]
        format: String,
    },
    /// List a pool's volumes.
    List {
        pool: String,
    },
    Show {
        volume: String,
    },
    /// Delete a volume no VM uses.
    Delete {
        volume: String,
    },
    /// Grow a volume (live when a running VM uses it).
    Resize {
        volume: String,
        #[arg(long)]
        size: String,
    },
    /// Clone POOL/NAME to NEW: linked (instant) unless --full.
    Clone {
        volume: String,
        new_name: String,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        full: bool,
    },
    /// Import a qcow2, raw or vmdk file as POOL/NAME.
    Import {
        volume: String,
        #[arg(long)]
        source: PathBuf,
        #[arg(long)]
        source_format: Option<String>,
        #[arg(long, default_value = "qcow2")]
        format: String,
    },
    /// Export POOL/NAME to a new file.
    Export {
        volume: String,
        #[arg(long)]
        to: PathBuf,
        #[arg(long, default_value = "qcow2")]
        format: String,
    },
}

fn split(volume: &str) -> Result<(String, String), ClientError> {
    oxvirt_model::parse_volume_ref("volume", volume).map_err(|e| ClientError::Usage(e.to_string()))
}

fn print_pools(pools: &[PoolView], out: Output) {
    if out == Output::Json {
        return print_json(&pools);
    }
    let rows = pools
        .iter()
        .map(|p| {
            let u = &p.usage;
            vec![
                p.pool.spec.name.clone(),
                format!("{:?}", p.pool.spec.kind).to_lowercase(),
                p.pool.spec.path.clone(),
                ByteSize(u.size).to_string(),
                ByteSize(u.free).to_string(),
                ByteSize(u.provisioned).to_string(),
                ByteSize(u.allocated).to_string(),
                u.volumes.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "PATH", "SIZE", "FREE", "PROVISIONED", "ALLOCATED", "VOLUMES"], rows);
}

pub fn print_volumes(vols: &[Volume], out: Output) {
    if out == Output::Json {
        return print_json(&vols);
    }
    let rows = vols
        .iter()
        .map(|v| {
            vec![
                v.reference(),
                v.format.as_str().to_string(),
                v.size.to_string(),
                v.attached_to.clone().unwrap_or_else(|| "-".into()),
                v.backing.clone().unwrap_or_else(|| "-".into()),
                v.snapshots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    table(&["VOLUME", "FORMAT", "SIZE", "ATTACHED TO", "BASED ON", "SNAPSHOTS"], rows);
}

fn abs(p: &std::path::Path) -> Result<String, ClientError> {
    crate::absolute(p)
}

pub async fn pool(client: &Client, out: Output, cmd: PoolCmd) -> Result<(), ClientError> {
    match cmd {
        PoolCmd::Create { name, path, kind, overcommit, paths, host_paths } => {
            let mut per_host = std::collections::BTreeMap::new();
            for hp in &host_paths {
                let (host, p) = hp
                    .split_once('=')
                    .ok_or_else(|| ClientError::Usage(format!("--host-path {hp:?}: must be HOST=PATH")))?;
                per_host.insert(host.to_string(), abs(std::path::Path::new(p))?);
            }
            let spec = PoolSpec {
                name,
                kind: word("--kind", &kind)?,
                path: abs(&path)?,
                overcommit,
                paths,
                host_paths: per_host,
            };
            print_pools(&[client.storage().create_pool(&spec).await?], out);
        }
        PoolCmd::List => print_pools(&client.storage().list_pools().await?, out),
        PoolCmd::Show { name } => print_pools(&[client.storage().get_pool(&name).await?], out),
        PoolCmd::Delete { name } => {
            client.storage().delete_pool(&name).await?;
            println!("pool {name} deleted");
        }
    }
    Ok(())
}

pub async fn volume(client: &Client, out: Output, cmd: VolumeCmd) -> Result<(), ClientError> {
    const A_DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    match cmd {
        VolumeCmd::Create { volume, size: s, format } => {
            let (p, n) = split(&volume)?;
            let spec = VolumeSpec { name: n, size: Some(size("--size", &s)?), format: word("--format", &format)? };
            print_volumes(&[client.storage().create_volume(&p, &spec).await?], out);
        }
        VolumeCmd::List { pool } => print_volumes(&client.storage().list_volumes(&pool).await?, out),
        VolumeCmd::Show { volume } => {
            let (p, n) = split(&volume)?;
            print_volumes(&[client.storage().get_volume(&p, &n).await?], out);
        }
        VolumeCmd::Delete { volume } => {
            let (p, n) = split(&volume)?;
            client.storage().delete_volume(&p, &n).await?;
            println!("volume {volume} deleted");
        }
        VolumeCmd::Resize { volume, size: s } => {
            let (p, n) = split(&volume)?;
            print_volumes(&[client.storage().resize_volume(&p, &n, size("--size", &s)?).await?], out);
        }
        VolumeCmd::Clone { volume, new_name, pool, full } => {
            let (p, n) = split(&volume)?;
            let req = CloneRequest { name: new_name.clone(), pool: pool.clone(), linked: !full };
            match client.storage().clone_volume(&p, &n, &req).await? {
                Cloned::Volume(v) => print_volumes(&[v], out),
                Cloned::Copying(t) => {
                    crate::follow_task(client, &t, A_DAY, out).await?;
                    print_volumes(&[client.storage().get_volume(pool.as_deref().unwrap_or(&p), &new_name).await?], out);
                }
            }
        }
        VolumeCmd::Import { volume, source, source_format, format } => {
            let (p, n) = split(&volume)?;
            let req = ImportRequest {
                name: n.clone(),
                source: abs(&source)?,
                source_format,
                format: word("--format", &format)?,
            };
            let t = client.storage().import_volume(&p, &req).await?;
            crate::follow_task(client, &t, A_DAY, out).await?;
            print_volumes(&[client.storage().get_volume(&p, &n).await?], out);
        }
        VolumeCmd::Export { volume, to, format } => {
            let (p, n) = split(&volume)?;
            let req = ExportRequest { destination: abs(&to)?, format: word("--format", &format)? };
            let t = client.storage().export_volume(&p, &n, &req).await?;
            let t = crate::follow_task(client, &t, A_DAY, out).await?;
            if out == Output::Json {
                print_json(&t);
            } else {
                println!("exported {volume} to {}", to.display());
            }
        }
    }
    Ok(())
}

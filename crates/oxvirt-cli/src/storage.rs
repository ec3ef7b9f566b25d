//! `oxvirt pool ...` and `oxvirt volume ...`.

use crate::output::{print_json, table, Output};
use clap::Subcommand;
use oxvirt_client::{encode, Client, ClientError};
use oxvirt_model::{ByteSize, PoolView, Task, Volume};
use serde_json::{json, Value};
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
    oxvirt_model::parse_volume_ref("volume", volume)
        .map(|(p, n)| (encode(&p), encode(&n)))
        .map_err(|e| ClientError::Http(e.to_string()))
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
            let mut per_host = serde_json::Map::new();
            for hp in &host_paths {
                let (host, p) = hp
                    .split_once('=')
                    .ok_or_else(|| ClientError::Http(format!("--host-path {hp:?}: must be HOST=PATH")))?;
                per_host.insert(host.to_string(), json!(abs(std::path::Path::new(p))?));
            }
            let body = json!({
                "name": name, "path": abs(&path)?, "kind": kind, "overcommit": overcommit, "paths": paths,
                "host_paths": per_host,
            });
            let p: PoolView = client.post("/api/v1/pools", &body).await?;
            print_pools(&[p], out);
        }
        PoolCmd::List => print_pools(&client.get::<Vec<PoolView>>("/api/v1/pools").await?, out),
        PoolCmd::Show { name } => print_pools(&[client.get(&format!("/api/v1/pools/{}", encode(&name))).await?], out),
        PoolCmd::Delete { name } => {
            client.delete(&format!("/api/v1/pools/{}", encode(&name))).await?;
            println!("pool {name} deleted");
        }
    }
    Ok(())
}

pub async fn volume(client: &Client, out: Output, cmd: VolumeCmd) -> Result<(), ClientError> {
    match cmd {
        VolumeCmd::Create { volume, size, format } => {
            let (p, n) = split(&volume)?;
            let v: Volume = client
                .post(&format!("/api/v1/pools/{p}/volumes"), &json!({ "name": n, "size": size, "format": format }))
                .await?;
            print_volumes(&[v], out);
        }
        VolumeCmd::List { pool } => {
            print_volumes(&client.get::<Vec<Volume>>(&format!("/api/v1/pools/{}/volumes", encode(&pool))).await?, out)
        }
        VolumeCmd::Show { volume } => {
            let (p, n) = split(&volume)?;
            print_volumes(&[client.get(&format!("/api/v1/pools/{p}/volumes/{n}")).await?], out);
        }
        VolumeCmd::Delete { volume } => {
            let (p, n) = split(&volume)?;
            client.delete(&format!("/api/v1/pools/{p}/volumes/{n}")).await?;
            println!("volume {volume} deleted");
        }
        VolumeCmd::Resize { volume, size } => {
            let (p, n) = split(&volume)?;
            let v: Volume = client.patch(&format!("/api/v1/pools/{p}/volumes/{n}"), &json!({ "size": size })).await?;
            print_volumes(&[v], out);
        }
        VolumeCmd::Clone { volume, new_name, pool, full } => {
            let (p, n) = split(&volume)?;
            let body = json!({ "name": new_name, "pool": pool, "linked": !full });
            let v: Value = client.post(&format!("/api/v1/pools/{p}/volumes/{n}/clone"), &body).await?;
            if full {
                let t: Task = serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))?;
                crate::follow_task(client, &t, std::time::Duration::from_secs(24 * 3600), out).await?;
                let target = pool.unwrap_or_else(|| volume.split('/').next().unwrap_or_default().to_string());
                print_volumes(
                    &[client.get(&format!("/api/v1/pools/{}/volumes/{}", encode(&target), encode(&new_name))).await?],
                    out,
                );
            } else {
                let v: Volume = serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))?;
                print_volumes(&[v], out);
            }
        }
        VolumeCmd::Import { volume, source, source_format, format } => {
            let (p, n) = split(&volume)?;
            let body = json!({ "name": n, "source": abs(&source)?, "source_format": source_format, "format": format });
            let t: Task = client.post(&format!("/api/v1/pools/{p}/import"), &body).await?;
            crate::follow_task(client, &t, std::time::Duration::from_secs(24 * 3600), out).await?;
            print_volumes(&[client.get(&format!("/api/v1/pools/{p}/volumes/{n}")).await?], out);
        }
        VolumeCmd::Export { volume, to, format } => {
            let (p, n) = split(&volume)?;
            let t: Task = client
                .post(
                    &format!("/api/v1/pools/{p}/volumes/{n}/export"),
                    &json!({ "destination": abs(&to)?, "format": format }),
                )
                .await?;
            let t = crate::follow_task(client, &t, std::time::Duration::from_secs(24 * 3600), out).await?;
            if out == Output::Json {
                print_json(&t);
            } else {
                println!("exported {volume} to {}", to.display());
            }
        }
    }
    Ok(())
}

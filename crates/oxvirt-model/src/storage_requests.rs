//! Bodies of the storage requests that are not resources themselves (clone, import, export,
//! resize, snapshot): the wire types the API parses and the client sends.

use crate::{ByteSize, DiskFormat};

/// Body of `POST /pools/{pool}/volumes/{name}/clone`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    pub name: String,
    /// Target pool (default: the source's).
    #[serde(default)]
    pub pool: Option<String>,
    /// Linked (a thin qcow2 on top of the source, instant) or full (a copy, as a task).
    #[serde(default = "yes")]
    pub linked: bool,
}

fn yes() -> bool {
    true
}

/// Body of `POST /pools/{pool}/import`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub name: String,
    /// An image file on the host: qcow2, raw or vmdk.
    pub source: String,
    /// `qcow2`, `raw` or `vmdk`; found out when left out.
    #[serde(default)]
    pub source_format: Option<String>,
    #[serde(default)]
    pub format: DiskFormat,
}

/// Body of `POST /pools/{pool}/volumes/{name}/export`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// A new file on the host.
    pub destination: String,
    #[serde(default)]
    pub format: DiskFormat,
}

/// Body of `PATCH /pools/{pool}/volumes/{name}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeResize {
    pub size: ByteSize,
}

/// Body of `POST .../snapshots` (a volume's or a VM's).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSnapshot {
    pub name: String,
}

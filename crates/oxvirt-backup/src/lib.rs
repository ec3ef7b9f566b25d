//! Backups of VMs: the repository format (`repo.rs`: chunks by SHA-256, zstd, written whole or
//! not at all; encrypted on the client with a key the hosts keep, `crypt.rs`), a backup's index (`index.rs`), the NBD client that reads QEMU's exports of a
//! running VM's disks with their dirty bitmaps and writes restored images (`nbd.rs`), and the
//! copying between the two, several connections at once (`copy.rs`). QEMU and the store are
//! the controller's; this crate knows neither.

pub mod copy;
pub mod crypt;
pub mod index;
pub mod maintenance;
pub mod nbd;
pub mod prune;
pub mod repo;

pub use copy::{back_up_disk, restore_disk, CopyError, DiskOutcome, DiskRead, Progress};
pub use crypt::{CryptError, RepoKey};
pub use index::{new_id, valid_id, BackupIndex, DiskIndex};
pub use maintenance::{collect_garbage, verify, GcReport, VerifyReport};
pub use nbd::{NbdClient, NbdError};
pub use prune::{Candidate, KeepPolicy};
pub use repo::{Repo, RepoError, Stored, WriteLease, CHUNK_SIZE, FORMAT};

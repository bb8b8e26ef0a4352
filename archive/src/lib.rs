//! The order log outside every consumer group: its archive, bounded reads of it, and putting
//! an archive back.
//!
//! - [`archiver`]: copies the log into Avro files named by a manifest ([`manifest`]), which
//!   [`check`](mod@check) verifies and [`reader`] reads back in offset order; it owns the
//!   `[archive]` section of the settings ([`ArchiveSettings`]);
//! - [`slice`](mod@slice): reads every partition between two offsets, for rebuilds;
//! - [`republish`](mod@republish): produces an archive into an empty topic at the offsets it had;
//! - [`lag`](mod@lag): how far the archive is behind the log (its RPO).
//!
//! Everything here reads or writes the log and the archive directory only: no database, no
//! consumer group joined, no offset committed. Folding the records into read models is the
//! work of `projections` (which reads through [`slice`](mod@slice) and [`reader`]), replaying the steps
//! that of `consumers`. Every Kafka client is built by `platform::kafka`.

pub mod archiver;
pub mod check;
#[cfg(test)]
mod fixture;
pub mod lag;
pub mod manifest;
pub mod reader;
pub mod republish;
pub mod slice;

pub use archiver::{ArchiveRun, ArchiveSettings, Archiver};
pub use check::{check, load_checked, ArchiveCheck};
pub use manifest::{Manifest, PartitionArchive, Segment, MANIFEST};
pub use reader::{message, ArchiveReader};
pub use republish::{republish, Republished};
pub use slice::{LogSlice, Range};

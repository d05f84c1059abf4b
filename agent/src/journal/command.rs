//! What the journal's handle sends its writer thread ([`Command`]), each with the channel its answer goes back on.

use storesync_shared::EventBody;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::append::{AppendError, AppendOutcome};
use super::doc::DocCommand;

pub(crate) enum Command {
    Append {
        event_id: Option<Uuid>,
        body: EventBody,
        /// `body`'s canonical JSON, made by the caller so the writer's critical path does not.
        canonical: String,
        reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
    },
    MarkSynced {
        through: u64,
        hash: String,
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    Doc(DocCommand),
    /// Commit what is queued before this, refuse everything after it as unavailable, and stop, even while handles
    /// live (the stop deadline: requests still in flight then were never answered, so nothing acknowledged is lost).
    Close,
}

//! Mapping of errors to gRPC status codes with messages a user can act on.

use dialtone_actors::Error as ActorError;
use dialtone_domain::Error as DomainError;
use tonic::Status;

/// The gRPC status for an actor-layer error.
pub fn from_actor(error: ActorError) -> Status {
    match error {
        ActorError::Domain(e) => from_domain(e),
        ActorError::WrongVersion { .. } => Status::aborted(error.to_string()),
        ActorError::Store(e) => match e {
            dialtone_eventlog::Error::WrongExpectedVersion { .. } => {
                Status::aborted(format!("concurrent change, retry: {e}"))
            }
            other => Status::unavailable(format!(
                "event log unavailable, nothing was changed: {other}"
            )),
        },
        ActorError::Unavailable(reason) => Status::unavailable(reason),
        ActorError::Corrupt { .. } => Status::internal(error.to_string()),
    }
}

pub fn from_domain(error: DomainError) -> Status {
    match &error {
        DomainError::Invalid { .. } => Status::invalid_argument(error.to_string()),
        DomainError::AlreadyExists(_) => Status::already_exists(error.to_string()),
        DomainError::NotFound(_) => Status::not_found(error.to_string()),
        DomainError::FailedPrecondition(_)
        | DomainError::OutOfOrder(_)
        | DomainError::Mailbox(_)
        | DomainError::ConferencePinLockedOut { .. } => {
            Status::failed_precondition(error.to_string())
        }
    }
}

pub fn from_store(error: dialtone_eventlog::Error) -> Status {
    from_actor(ActorError::Store(error))
}

/// INVALID_ARGUMENT naming the field.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}

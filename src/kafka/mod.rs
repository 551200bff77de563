//! Kafka I/O: topic administration and the shared idempotent producer (`producer`), the
//! transactional writer of each owned intake partition (`txn`), pooled replay reads of stream
//! topics (`reader`), the intake consumer with its dead-letter path and rebalance callbacks
//! (`intake`), the changelog of stream records with its follower (`changelog`), and stream topic
//! names (`naming`).

pub mod changelog;
pub mod intake;
pub mod naming;
pub mod producer;
pub mod reader;
pub mod txn;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Whether a consumer error is one librdkafka recovers from on its own (a dropped or refused
/// connection, a request that timed out, a leader moving), so a read should keep going until its
/// own deadline rather than fail. Consumers report these as events while they reconnect; under
/// load a single broker's connections can all drop for a moment and come back.
pub fn is_transient(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_loss_is_transient_and_a_missing_topic_is_not() {
        let consume = |c| KafkaError::MessageConsumption(c);
        assert!(is_transient(&consume(RDKafkaErrorCode::AllBrokersDown)));
        assert!(is_transient(&consume(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(!is_transient(&consume(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
        assert!(!is_transient(&consume(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!is_transient(&KafkaError::Canceled));
    }
}

//! `Settings`: the whole configuration file, composed of every component's own section. Each
//! section's type lives with what it configures — `[kafka]`, `[database]` and `[consumer]` in
//! `platform::config`, `[admin]` (the metrics and health listener) in `platform::admin`,
//! `[tracing]` (trace export) in `platform::trace`,
//! `[payment]`, `[shipping]` and `[saga]` in their `consumers` steps, `[archive]` in `archive`,
//! `[api]` (the HTTP API) in `api`, `[privacy]` (the master key, sealing) in `privacy` —
//! and this crate, the one that knows every component, puts them together and hands each
//! component only its own sections.
//!
//! Loading is `platform::config::layered` (defaults, an optional TOML file, `ORDERFLOW_*`
//! variables such as `ORDERFLOW_PAYMENT__DECLINE_OVER_MINOR`), then the Kafka security check.
//! Unknown keys are errors, in the file and in the environment.

use std::path::Path;

use api::ApiSettings;
use archive::ArchiveSettings;
use consumers::payment::PaymentSettings;
use consumers::saga::SagaSettings;
use consumers::shipping::ShippingSettings;
use platform::admin::AdminSettings;
use platform::config::{
    kafka, layered, ConfigError, ConsumerSettings, DatabaseSettings, KafkaSettings,
};
use platform::trace::TracingSettings;
use privacy::PrivacySettings;
use serde::{Deserialize, Serialize};

/// Every section of the configuration file; the defaults are each section's own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub database: DatabaseSettings,
    pub consumer: ConsumerSettings,
    pub payment: PaymentSettings,
    pub shipping: ShippingSettings,
    pub saga: SagaSettings,
    pub api: ApiSettings,
    pub archive: ArchiveSettings,
    pub admin: AdminSettings,
    pub tracing: TracingSettings,
    pub privacy: PrivacySettings,
}

impl Settings {
    /// Defaults, then `file` if given (it must exist), then `ORDERFLOW_*` variables (the SASL
    /// password's taken verbatim); then the Kafka security settings are checked
    /// (`KafkaSettings::settle`). Every error names the setting and where it came from.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut settings: Settings = layered(
            file,
            &[kafka::PASSWORD_KEY, privacy::settings::MASTER_KEY_KEY],
        )?;
        settings.kafka.settle()?;
        Ok(settings)
    }

    /// The consumer group of `component` (`<kafka.group_prefix>.<component>`).
    pub fn group_id(&self, component: &str) -> String {
        self.kafka.group_id(component)
    }
}

#[cfg(test)]
// figment's Jail closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn every_section_reads_from_file_and_env_under_its_own_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "orderflow.toml",
                "[kafka]\ntopic = \"from-file\"\n\
                 [payment]\ndecline_over_minor = 100\n\
                 [payment.calls]\ntimeout_ms = 250\n\
                 [shipping]\nunserved_countries = [\"AQ\", \"KP\"]\n\
                 [saga]\npayment_timeout_ms = 60000\n\
                 [archive]\ndir = \"/var/lib/orderflow/archive\"\n\
                 [api]\nlisten = \"0.0.0.0:8443\"\n\
                 [admin]\nlisten = \"0.0.0.0:9464\"\n\
                 [tracing]\notlp_endpoint = \"http://collector:4318\"\n",
            )?;
            jail.set_env("ORDERFLOW_TRACING__SAMPLING_RATIO", "0.25");
            jail.set_env("ORDERFLOW_PAYMENT__DECLINE_OVER_MINOR", "123456");
            jail.set_env("ORDERFLOW_SHIPPING__CALLS__BREAKER_FAILURES", "9");
            jail.set_env("ORDERFLOW_SAGA__DEADLINE_CHECK_INTERVAL_MS", "0");
            jail.set_env("ORDERFLOW_CONSUMER__BATCH_MAX_EVENTS", "64");
            jail.set_env("ORDERFLOW_API__INSECURE_DEV_PRINCIPAL", "service");
            let s = Settings::load(Some(Path::new("orderflow.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.kafka.topic, "from-file");
            assert_eq!(s.payment.decline_over_minor, 123_456, "env over file");
            assert_eq!(s.payment.calls.timeout_ms, 250);
            assert_eq!(
                s.payment.calls.breaker_failures, 5,
                "unset keys keep defaults"
            );
            assert_eq!(s.shipping.unserved_countries, ["AQ", "KP"]);
            assert_eq!(s.shipping.carrier, "simulated-post");
            assert_eq!(s.shipping.calls.breaker_failures, 9);
            assert_eq!(s.saga.payment_timeout_ms, 60_000);
            assert_eq!(s.saga.deadline_check_interval_ms, 0);
            assert_eq!(s.consumer.batch_max_events, 64);
            assert_eq!(s.archive.dir, "/var/lib/orderflow/archive");
            assert_eq!(s.api.listen, "0.0.0.0:8443");
            assert_eq!(s.api.insecure_dev_principal.as_deref(), Some("service"));
            assert_eq!(s.api.wait_max_secs, 10, "unset keys keep defaults");
            assert_eq!(s.admin.listen, "0.0.0.0:9464");
            assert_eq!(s.tracing.otlp_endpoint, "http://collector:4318");
            assert_eq!(s.tracing.sampling_ratio, 0.25);
            assert_eq!(s.tracing.service_name, "orderflow");
            assert_eq!(s.group_id("payment"), "orderflow.payment");
            Ok(())
        });
    }

    #[test]
    fn no_setting_loaded_is_the_defaults() {
        figment::Jail::expect_with(|_jail| {
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s, Settings::default());
            assert_eq!(s.payment.decline_over_minor, 500_000);
            assert_eq!(s.saga.shipping_timeout_ms, 600_000);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_in_any_section_are_errors_naming_the_key() {
        figment::Jail::expect_with(|jail| {
            for (file, text, key) in [
                (
                    "top.toml",
                    "[payments]\ndecline_over_minor = 1\n",
                    "payments",
                ),
                (
                    "payment.toml",
                    "[payment]\ndecline_over = 1\n",
                    "decline_over",
                ),
                ("calls.toml", "[shipping.calls]\ntimeout = 1\n", "timeout"),
                (
                    "saga.toml",
                    "[saga]\ninventory_timeout = 1\n",
                    "inventory_timeout",
                ),
                (
                    "archive.toml",
                    "[archive]\ndirectory = \"x\"\n",
                    "directory",
                ),
                ("admin.toml", "[admin]\nlisten_on = \"off\"\n", "listen_on"),
            ] {
                jail.create_file(file, text)?;
                let err = Settings::load(Some(Path::new(file)))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key) && err.contains(file), "{file}: {err}");
            }
            jail.set_env("ORDERFLOW_PAYMENT__DECLINE_OVER", "1");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("decline_over"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_api_tls_section_and_its_clients_read_from_file_and_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tls.toml",
                "[api.tls]\ncert_file = \"/etc/orderflow/api.pem\"\n\
                 key_file = \"/etc/orderflow/api.key\"\n\
                 client_ca_file = \"/etc/orderflow/clients-ca.pem\"\n\
                 client_certs = \"required\"\n\
                 [[api.tls.clients]]\nsubject = \"checkout\"\n\
                 [[api.tls.clients]]\nsubject = \"bi-export\"\nrole = \"analyst\"\n",
            )?;
            jail.set_env("ORDERFLOW_API__TLS__CLIENT_CERTS", "optional");
            let s = Settings::load(Some(Path::new("tls.toml"))).map_err(|e| e.to_string())?;
            let tls = s.api.tls.as_ref().expect("[api.tls] read");
            assert_eq!(tls.key_file, Path::new("/etc/orderflow/api.key"));
            assert_eq!(
                tls.client_certs,
                api::tls::ClientCertMode::Optional,
                "env over file"
            );
            assert_eq!(
                (
                    tls.clients[0].subject.as_str(),
                    tls.clients[0].role.as_str()
                ),
                ("checkout", "service"),
                "the role defaults to service"
            );
            assert_eq!(tls.clients[1].role, "analyst");
            tls.check().map_err(|e| e.to_string())?;
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("cert_file"),
                "a partial [api.tls] names what is missing: {err}"
            );
            std::env::remove_var("ORDERFLOW_API__TLS__CLIENT_CERTS");
            assert_eq!(
                Settings::load(None).map_err(|e| e.to_string())?.api.tls,
                None
            );
            for (file, text, key) in [
                (
                    "tls-key.toml",
                    "[api.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nca_file = \"x\"\n",
                    "ca_file",
                ),
                (
                    "tls-client.toml",
                    "[api.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n\
                     [[api.tls.clients]]\nsubject = \"a\"\ncn = \"b\"\n",
                    "cn",
                ),
                (
                    "tls-mode.toml",
                    "[api.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_certs = \"yes\"\n",
                    "client_certs",
                ),
            ] {
                jail.create_file(file, text)?;
                let err = Settings::load(Some(Path::new(file)))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key) && err.contains(file), "{file}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_setting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ORDERFLOW_PAYMENT__DECLINE_OVER_MINOR", "lots");
            let err = Settings::load(None).unwrap_err().to_string();
            // figment names an environment key as written there, upper case.
            let named = err.to_lowercase().contains("payment.decline_over_minor");
            assert!(named && err.contains("ORDERFLOW_"), "{err}");
            std::env::remove_var("ORDERFLOW_PAYMENT__DECLINE_OVER_MINOR");
            jail.create_file("typed.toml", "[saga]\npayment_timeout_ms = \"soon\"\n")?;
            let err = Settings::load(Some(Path::new("typed.toml")))
                .unwrap_err()
                .to_string();
            let named = err.contains("saga.payment_timeout_ms");
            assert!(named && err.contains("typed.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_kafka_security_check_runs_on_the_composed_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ORDERFLOW_KAFKA__SECURITY_PROTOCOL", "sasl_ssl");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("kafka.sasl_username"), "{err}");
            jail.set_env("ORDERFLOW_KAFKA__SASL_USERNAME", "orderflow");
            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD", "0123");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let password = s.kafka.sasl_password.as_ref().map(|p| p.expose());
            assert_eq!(password, Some("0123"));
            assert!(
                !format!("{s:?}").contains("0123"),
                "the password never prints"
            );
            Ok(())
        });
    }
}

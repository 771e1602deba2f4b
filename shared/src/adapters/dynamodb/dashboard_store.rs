//! The dashboard's sessions and sign-in attempt counts in one DynamoDB table keyed by `pk`:
//! - `SESSION#{digest of the cookie}`: one item per signed-in session, deleted at sign-out and
//!   expiring by TTL (`expires_at`, seconds) after `expires_at_ms`;
//! - `SIGNIN#{counter}#{window}`: the attempts counted on one counter (`client#{ip}` or `all`) in
//!   one fixed window, expiring by TTL once the window is long past;
//! - `LOGIN#{digest of the state}`: a sign-in gone to the identity provider, taken (deleted) when
//!   the browser returns, expiring by TTL otherwise.

use std::collections::HashMap;

use anyhow::anyhow;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;

use super::{condition_failed, n, s, unavailable, written_or_not};
use crate::ports::{
    DashboardSessions, PendingLogin, PendingLogins, SignInCounters, StoreUnavailable, StoredSession,
};

/// [`DashboardSessions`] and [`SignInCounters`] over a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbDashboardStore {
    client: Client,
    table: String,
}

impl DynamoDbDashboardStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

pub fn session_pk(key: &str) -> String {
    format!("SESSION#{key}")
}

pub fn login_pk(key: &str) -> String {
    format!("LOGIN#{key}")
}

pub fn sign_in_pk(counter: &str, window: i64) -> String {
    format!("SIGNIN#{counter}#{window}")
}

/// DynamoDB's TTL is in seconds; rounded up, so that an item never goes before its time.
fn ttl_seconds(ms: i64) -> i64 {
    ms.div_euclid(1000) + 1
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

#[async_trait]
impl DashboardSessions for DynamoDbDashboardStore {
    async fn create(&self, key: &str, session: &StoredSession) -> Result<(), StoreUnavailable> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(session_pk(key)))
            .item("kind", s("session"))
            .item("created_at_ms", n(session.created_at_ms))
            .item("expires_at_ms", n(session.expires_at_ms))
            .item("password_version", s(&session.password_version))
            .item("operator", s(&session.operator))
            .item("subject", s(&session.subject))
            .item("expires_at", n(ttl_seconds(session.expires_at_ms)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        if written_or_not(result)? {
            Ok(())
        } else {
            Err(StoreUnavailable(anyhow!(
                "a session with this key is stored already"
            )))
        }
    }

    async fn find(&self, key: &str) -> Result<Option<StoredSession>, StoreUnavailable> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(session_pk(key)))
            // A sign-out on another instance must show at once.
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output.item().and_then(|item| {
            Some(StoredSession {
                created_at_ms: number(item, "created_at_ms").unwrap_or(0),
                expires_at_ms: number(item, "expires_at_ms")?,
                password_version: item.get("password_version")?.as_s().ok()?.clone(),
                operator: item
                    .get("operator")
                    .and_then(|value| value.as_s().ok())
                    .cloned()
                    .unwrap_or_else(|| crate::dashboard::session::SHARED_PASSWORD_OPERATOR.to_string()),
                subject: item
                    .get("subject")
                    .and_then(|value| value.as_s().ok())
                    .cloned()
                    .unwrap_or_else(|| "unknown".to_string()),
            })
        }))
    }

    async fn end(&self, key: &str) -> Result<(), StoreUnavailable> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(session_pk(key)))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl SignInCounters for DynamoDbDashboardStore {
    async fn count(
        &self,
        counter: &str,
        window: i64,
        limit: u32,
        keep_until_ms: i64,
    ) -> Result<Option<u32>, StoreUnavailable> {
        // One conditional write: concurrent attempts on any instance are counted one by one, and
        // none past the limit.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sign_in_pk(counter, window)))
            .update_expression("SET #kind = :kind, #expires = :expires ADD #attempts :one")
            .condition_expression("attribute_not_exists(#attempts) OR #attempts < :limit")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#expires", "expires_at")
            .expression_attribute_names("#attempts", "attempts")
            .expression_attribute_values(":kind", s("sign_in_attempts"))
            .expression_attribute_values(":expires", n(ttl_seconds(keep_until_ms)))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(output) => {
                let count = output
                    .attributes()
                    .and_then(|item| number(item, "attempts"))
                    .unwrap_or(1);
                Ok(Some(u32::try_from(count).unwrap_or(limit)))
            }
            Err(error) if condition_failed(&error) => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn uncount(&self, counter: &str, window: i64) -> Result<(), StoreUnavailable> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sign_in_pk(counter, window)))
            .update_expression("ADD #attempts :minus_one")
            .condition_expression("#attempts > :zero")
            .expression_attribute_names("#attempts", "attempts")
            .expression_attribute_values(":minus_one", n(-1))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        // Nothing counted (the item expired or never was): nothing to take back.
        written_or_not(result).map(|_| ())
    }
}

#[async_trait]
impl PendingLogins for DynamoDbDashboardStore {
    async fn put(&self, key: &str, login: &PendingLogin) -> Result<(), StoreUnavailable> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(login_pk(key)))
            .item("kind", s("login"))
            .item("nonce", s(&login.nonce))
            .item("verifier", s(&login.verifier))
            .item("browser", s(&login.browser))
            .item("redirect_uri", s(&login.redirect_uri))
            .item("next", s(&login.next))
            .item("expires_at_ms", n(login.expires_at_ms))
            .item("expires_at", n(ttl_seconds(login.expires_at_ms)))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn take(&self, key: &str) -> Result<Option<PendingLogin>, StoreUnavailable> {
        // A delete that returns what it deleted: of two concurrent returns, one gets the item.
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(login_pk(key)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output.attributes().and_then(|item| {
            let text = |name: &str| item.get(name)?.as_s().ok().cloned();
            Some(PendingLogin {
                nonce: text("nonce")?,
                verifier: text("verifier")?,
                browser: text("browser")?,
                redirect_uri: text("redirect_uri")?,
                next: text("next")?,
                expires_at_ms: number(item, "expires_at_ms")?,
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_keyed_by_kind_and_the_ttl_never_comes_early() {
        assert_eq!(session_pk("abc"), "SESSION#abc");
        assert_eq!(sign_in_pk("client#192.0.2.1", 7), "SIGNIN#client#192.0.2.1#7");
        assert_eq!(ttl_seconds(1_000), 2);
        assert_eq!(ttl_seconds(1_999), 2);
    }
}

//! Any cached kind, decoded one object at a time: a list or watch event whose object does not
//! decode yields a [`Decoded::Rejected`] (its identity and why) instead of failing the whole list,
//! so one object a tenant wrote cannot stop the watch of every other. The object's JSON text is
//! held only while it is decoded.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// The reason kept for a rejected object (an Event note must stay under 1 kB).
const MAX_REASON: usize = 400;

#[derive(Clone, Debug, PartialEq)]
pub enum Decoded<K> {
    Ok(K),
    /// Boxed: the stores of well-formed objects do not pay for it.
    Rejected(Box<Rejected>),
}

/// An object the daemon cannot use: who it is and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub metadata: ObjectMeta,
    pub reason: String,
}

impl<K> Decoded<K> {
    pub fn ok(&self) -> Option<&K> {
        match self {
            Decoded::Ok(k) => Some(k),
            Decoded::Rejected(_) => None,
        }
    }

    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            Decoded::Ok(_) => None,
            Decoded::Rejected(r) => Some(r),
        }
    }

    /// Reject a decoded object that breaks a bound the schema could not state.
    pub fn check(&mut self, check: impl FnOnce(&K) -> Result<(), String>)
    where
        K: Resource,
    {
        if let Decoded::Ok(k) = self
            && let Err(reason) = check(k)
        {
            *self = Decoded::Rejected(Box::new(Rejected {
                metadata: identity(k.meta().clone()),
                reason: bounded(reason),
            }));
        }
    }
}

/// Name, namespace, uid and resourceVersion: enough to name it in an Event and to tell a new
/// version of it from a relist.
fn identity(m: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    }
}

fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

#[derive(Deserialize)]
struct Envelope {
    metadata: ObjectMeta,
}

/// Never fails for an object with readable metadata: the API server only serves those.
impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        match serde_json::from_str::<K>(raw.get()) {
            Ok(k) => Ok(Decoded::Ok(k)),
            Err(e) => {
                let envelope: Envelope = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
                Ok(Decoded::Rejected(Box::new(Rejected {
                    metadata: identity(envelope.metadata),
                    reason: bounded(e.to_string()),
                })))
            }
        }
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Decoded<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Decoded::Ok(k) => k.meta(),
            Decoded::Rejected(r) => &r.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Decoded::Ok(k) => k.meta_mut(),
            Decoded::Rejected(r) => &mut r.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::command::RolloutCommand;
    use serde_json::json;

    fn command(name: &str, step: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutCommand",
               "metadata": {"name": name, "namespace": "dev", "uid": format!("u-{name}"), "resourceVersion": "3"},
               "spec": {"policy": "app", "command": "abort", "canary": "abc", "step": step, "requestedBy": "alice"}})
    }

    #[test]
    fn one_undecodable_item_does_not_fail_the_list() {
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {},
                          "items": [command("good", json!(1)), command("bad", json!(4294967296u64)), command("worse", json!("x"))]});
        let text = list.to_string();
        let items: kube::core::ObjectList<Decoded<RolloutCommand>> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let items = items.items;
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].ok().map(|c| c.spec.step), Some(Some(1)));
        let bad = items[1].rejected().unwrap_or_else(|| panic!("bad decoded"));
        assert_eq!(bad.metadata.name.as_deref(), Some("bad"));
        assert_eq!(bad.metadata.uid.as_deref(), Some("u-bad"));
        assert!(bad.reason.contains("4294967296"), "{}", bad.reason);
        assert!(items[2].rejected().is_some());
        // A typed list of the same text fails as a whole: what the caches did before.
        assert!(serde_json::from_str::<kube::core::ObjectList<RolloutCommand>>(&text).is_err());
    }

    #[test]
    fn a_failed_check_rejects_and_the_reason_is_bounded() {
        let mut d: Decoded<RolloutCommand> =
            serde_json::from_str(&command("long", json!(1)).to_string()).unwrap_or_else(|e| panic!("{e}"));
        d.check(|_| Err("x".repeat(5000)));
        let r = d.rejected().unwrap_or_else(|| panic!("not rejected"));
        assert!(r.reason.len() <= MAX_REASON + 3);
        assert_eq!(d.meta().name.as_deref(), Some("long"));
    }
}

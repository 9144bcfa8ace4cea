//! Reading one key of a Secret (only ever in the daemon's own namespace): the one Secret reader.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use crate::error::{Error, Result};
use crate::resources::policy::SecretKeyRef;

/// One key of a Secret, from `data` or (not yet folded by the API server) `stringData`.
pub fn secret_bytes(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    let data = secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone());
    data.or_else(|| {
        let strings = secret.string_data.as_ref()?;
        strings.get(key).map(|s| s.clone().into_bytes())
    })
}

/// One key of a Secret as UTF-8 text.
pub async fn secret_value(secrets: &Api<Secret>, r: &SecretKeyRef) -> Result<String> {
    let secret = secrets.get(&r.name).await?;
    let bytes = secret_bytes(&secret, &r.key)
        .ok_or_else(|| Error::Secret(format!("Secret {} has no key {:?}", r.name, r.key)))?;
    String::from_utf8(bytes).map_err(|_| Error::Secret(format!("Secret {} key {:?} is not UTF-8", r.name, r.key)))
}

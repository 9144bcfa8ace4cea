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

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn a_key_is_read_from_data_or_from_string_data() {
        let secret = Secret {
            data: Some([("a".to_string(), ByteString(b"from-data".to_vec()))].into()),
            string_data: Some([("b".to_string(), "from-string-data".to_string())].into()),
            ..Default::default()
        };
        assert_eq!(secret_bytes(&secret, "a").as_deref(), Some(&b"from-data"[..]));
        assert_eq!(secret_bytes(&secret, "b").as_deref(), Some(&b"from-string-data"[..]));
        assert_eq!(secret_bytes(&secret, "c"), None);
    }
}

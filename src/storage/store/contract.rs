//! The [`ObjectStore`] failure contract as one test body, run against every backend: the
//! memory store in unit tests (host and wasm32), R2 through the worker's self-test route
//! (`POST /__self-test/store`, end to end against local R2).

use super::{Body, Fetched, ObjectStore, PutCondition, PutOutcome, StoreError};

/// Checks `store` against the failure contract, with keys under `prefix` (which must not
/// exist yet).
///
/// # Errors
/// The first way the backend breaks the contract.
pub async fn check<S: ObjectStore>(store: &S, prefix: &str) -> Result<(), String> {
    let key = format!("{prefix}/contract-object");
    let fail = |what: &str| Err(format!("{what} (key {key})"));
    let err = |e: StoreError| format!("unexpected store error: {e}");

    if !matches!(
        store.get(&key, u64::MAX, None).await.map_err(err)?,
        Fetched::Missing
    ) {
        return fail("get of a missing key must be Missing");
    }
    if store.head(&key).await.map_err(err)?.is_some() {
        return fail("head of a missing key must be None");
    }
    let PutOutcome::Stored { etag: first } = store
        .put(&key, b"one", &[], &PutCondition::IfAbsent)
        .await
        .map_err(err)?
    else {
        return fail("create-only put on a missing key must store");
    };
    if store
        .put(&key, b"two", &[], &PutCondition::IfAbsent)
        .await
        .map_err(err)?
        != PutOutcome::ConditionFailed
    {
        return fail("create-only put on an existing key must fail its condition");
    }
    if store
        .put(
            &key,
            b"two",
            &[],
            &PutCondition::IfMatch("stale-etag".into()),
        )
        .await
        .map_err(err)?
        != PutOutcome::ConditionFailed
    {
        return fail("put with a stale etag must fail its condition");
    }
    let Fetched::Found(got) = store.get(&key, u64::MAX, None).await.map_err(err)? else {
        return fail("get of an existing key must find it");
    };
    if got.body.into_vec().await.map_err(err)? != b"one" || got.etag != first {
        return fail("failed conditional puts must leave the object unchanged");
    }
    let PutOutcome::Stored { etag: second } = store
        .put(
            &key,
            b"two",
            &[("k", "v".into())],
            &PutCondition::IfMatch(first.clone()),
        )
        .await
        .map_err(err)?
    else {
        return fail("put matching the current etag must store");
    };
    if second == first {
        return fail("new content must get a new etag");
    }
    let Fetched::Found(got) = store.get(&key, 3, Some(&first)).await.map_err(err)? else {
        return fail("get at exactly the size limit, with an outdated etag, must return the body");
    };
    let (etag, metadata) = (got.etag.clone(), got.metadata.clone());
    if got.body.into_vec().await.map_err(err)? != b"two"
        || etag != second
        || metadata.get("k").map(String::as_str) != Some("v")
    {
        return fail("get must return the latest body, etag and metadata");
    }
    if !matches!(
        store.get(&key, 3, Some(&second)).await.map_err(err)?,
        Fetched::NotModified { .. }
    ) {
        return fail("get with the current etag must be NotModified");
    }
    if !matches!(
        store.get(&key, 2, None).await.map_err(err)?,
        Fetched::TooLarge { size_bytes: 3 }
    ) {
        return fail("get over the size limit must be TooLarge with the object's size");
    }
    match store.head(&key).await.map_err(err)? {
        Some(head)
            if head.etag == second && head.metadata.get("k").map(String::as_str) == Some("v") =>
        {
            Ok(())
        }
        other => Err(format!(
            "head must return the etag and metadata, got {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::storage::MemoryStore;

    /// The in-memory backend honours the failure contract the pipeline relies on (the same
    /// contract body runs against local R2 in the end-to-end suite).
    #[test]
    fn memory_store_contract() {
        let store = MemoryStore::new();
        pollster::block_on(check(&store, "contract")).unwrap();
    }
}

//! The R2 binding behind the `ObjectStore` seam, bound with `wasm_bindgen` directly so a body
//! crosses into wasm with a single copy.

use std::collections::HashMap;

use js_sys::{Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use worker::Env;

use crate::error::Error;
use crate::store::{
    Body, Fetched, ObjectHead, ObjectStore, PutCondition, PutOutcome, StoreError, StoreErrorKind,
    StoredObject,
};

/// Name of the R2 binding in wrangler.toml.
const BUCKET_BINDING: &str = "USER_DATA";

#[wasm_bindgen]
extern "C" {
    /// The runtime's `R2Bucket`.
    type JsBucket;
    #[wasm_bindgen(method, catch)]
    fn get(this: &JsBucket, key: &str, options: &JsValue) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn head(this: &JsBucket, key: &str) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn put(
        this: &JsBucket,
        key: &str,
        value: &Uint8Array,
        options: &JsValue,
    ) -> Result<Promise, JsValue>;

    /// The runtime's `R2Object` / `R2ObjectBody`.
    type JsObject;
    #[wasm_bindgen(method, getter)]
    fn etag(this: &JsObject) -> String;
    #[wasm_bindgen(method, getter)]
    fn size(this: &JsObject) -> f64;
    #[wasm_bindgen(method, getter)]
    fn body(this: &JsObject) -> JsValue;
    #[wasm_bindgen(method, getter, js_name = customMetadata)]
    fn custom_metadata(this: &JsObject) -> JsValue;
    #[wasm_bindgen(method, catch, js_name = arrayBuffer)]
    fn array_buffer(this: &JsObject) -> Result<Promise, JsValue>;
}

/// R2 behind the [`ObjectStore`] seam.
pub(crate) struct R2Store {
    bucket: JsBucket,
}

impl R2Store {
    /// The `USER_DATA` binding.
    pub(crate) fn from_env(env: &Env) -> Result<Self, Error> {
        let bucket = env.bucket(BUCKET_BINDING).map_err(super::http::internal)?;
        Ok(Self {
            bucket: JsValue::from(bucket).unchecked_into(),
        })
    }
}

/// An object body still in JS memory; it is copied once, into SQLite's buffer.
pub(crate) struct JsBody(Uint8Array);

impl Body for JsBody {
    fn len(&self) -> usize {
        self.0.length() as usize
    }

    fn copy_to(&self, dst: &mut [u8]) {
        self.0.copy_to(dst);
    }
}

/// Classifies an R2 exception by the code at the end of its message ("put: ... (10058)"),
/// as R2's error-code reference documents them.
fn store_error(operation: &'static str, e: &JsValue) -> StoreError {
    let detail = e
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    let code = detail
        .rsplit_once('(')
        .and_then(|(_, tail)| tail.trim_end_matches(')').parse::<u32>().ok());
    let kind = match code {
        // TooManyRequests: the per-object write rate.
        Some(10058) => StoreErrorKind::RateLimited,
        // InternalError, ServiceUnavailable: R2's own transient failures.
        Some(10001 | 10043) | None => StoreErrorKind::Transient,
        // Permissions, bad bucket, bad request: repeating will not help.
        Some(_) => StoreErrorKind::Permanent,
    };
    StoreError::new(operation, kind, detail)
}

fn metadata_map(value: &JsValue) -> HashMap<String, String> {
    if !value.is_object() {
        return HashMap::new();
    }
    Object::entries(value.unchecked_ref())
        .iter()
        .filter_map(|entry| {
            let pair = js_sys::Array::from(&entry);
            Some((pair.get(0).as_string()?, pair.get(1).as_string()?))
        })
        .collect()
}

impl ObjectStore for R2Store {
    type Body = JsBody;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<JsBody>, StoreError> {
        let options = Object::new();
        if let Some(etag) = if_none_match {
            let only_if = Object::new();
            Reflect::set(
                &only_if,
                &"etagDoesNotMatch".into(),
                &JsValue::from_str(etag),
            )
            .and_then(|_| Reflect::set(&options, &"onlyIf".into(), &only_if))
            .map_err(|e| store_error("get", &e))?;
        }
        let promise = self
            .bucket
            .get(key, &options)
            .map_err(|e| store_error("get", &e))?;
        let value = JsFuture::from(promise)
            .await
            .map_err(|e| store_error("get", &e))?;
        if value.is_null() || value.is_undefined() {
            return Ok(Fetched::Missing);
        }
        // A failed `onlyIf` answers with the object's metadata and no body at all.
        if if_none_match.is_some() && !Reflect::has(&value, &"body".into()).unwrap_or(true) {
            return Ok(Fetched::NotModified);
        }
        let object: JsObject = value.unchecked_into();
        // `get` resolves once the metadata has arrived; the body is still an unread stream,
        // so an oversize object is refused here without downloading it.
        // Float-to-int `as` saturates; R2 sizes are whole numbers.
        let size_bytes = object.size() as u64;
        if size_bytes > max_bytes {
            if let Ok(stream) = object.body().dyn_into::<web_sys::ReadableStream>() {
                // Best effort: an unread stream is released with the request anyway.
                let _ = stream.cancel();
            }
            return Ok(Fetched::TooLarge { size_bytes });
        }
        let promise = object
            .array_buffer()
            .map_err(|e| store_error("get body", &e))?;
        let buffer = JsFuture::from(promise)
            .await
            .map_err(|e| store_error("get body", &e))?;
        Ok(Fetched::Found(StoredObject {
            etag: object.etag(),
            metadata: metadata_map(&object.custom_metadata()),
            body: JsBody(Uint8Array::new(&buffer)),
        }))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StoreError> {
        let promise = self.bucket.head(key).map_err(|e| store_error("head", &e))?;
        let value = JsFuture::from(promise)
            .await
            .map_err(|e| store_error("head", &e))?;
        if value.is_null() || value.is_undefined() {
            return Ok(None);
        }
        let object: JsObject = value.unchecked_into();
        Ok(Some(ObjectHead {
            etag: object.etag(),
            metadata: metadata_map(&object.custom_metadata()),
        }))
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError> {
        let fail = |e: JsValue| store_error("put", &e);
        let custom = Object::new();
        for (k, v) in metadata {
            Reflect::set(&custom, &JsValue::from_str(k), &JsValue::from_str(v)).map_err(fail)?;
        }
        let only_if = Object::new();
        match condition {
            PutCondition::IfMatch(etag) => {
                Reflect::set(&only_if, &"etagMatches".into(), &JsValue::from_str(etag))
            }
            // `etagDoesNotMatch: "*"` is If-None-Match: * — store only if no object exists.
            PutCondition::IfAbsent => {
                Reflect::set(&only_if, &"etagDoesNotMatch".into(), &"*".into())
            }
        }
        .map_err(fail)?;
        let options = Object::new();
        Reflect::set(&options, &"customMetadata".into(), &custom).map_err(fail)?;
        Reflect::set(&options, &"onlyIf".into(), &only_if).map_err(fail)?;
        // One copy, out of wasm memory: a view into it could be detached by memory growth
        // while the put is in flight.
        let length = u32::try_from(bytes.len()).map_err(|_| {
            StoreError::new("put", StoreErrorKind::Permanent, "object larger than 4 GiB")
        })?;
        let value = Uint8Array::new_with_length(length);
        value.copy_from(bytes);
        let promise = self.bucket.put(key, &value, &options).map_err(fail)?;
        let stored = JsFuture::from(promise).await.map_err(fail)?;
        if stored.is_null() || stored.is_undefined() {
            return Ok(PutOutcome::ConditionFailed);
        }
        let stored: JsObject = stored.unchecked_into();
        Ok(PutOutcome::Stored {
            etag: stored.etag(),
        })
    }
}

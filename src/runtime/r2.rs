//! The R2 binding behind the `ObjectStore` seam, bound with `wasm_bindgen` directly so bytes
//! move in chunks: a body streams straight into SQLite's buffer, and an upload streams out of
//! wasm memory through a `FixedLengthStream`. No whole copy of a database is ever held in JS.

use std::collections::HashMap;

use js_sys::{Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use worker::Env;

use crate::error::Error;
use crate::storage::{
    Body, Fetched, Listed, ObjectHead, ObjectStore, PutCondition, PutOutcome, StoreError,
    StoreErrorKind, StoredObject,
};

/// Name of the R2 binding in wrangler.toml.
const BUCKET_BINDING: &str = "USER_DATA";
/// Bytes copied out of wasm memory per upload chunk: the only JS-side copy, bounded.
const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;

#[wasm_bindgen]
extern "C" {
    /// The runtime's `R2Bucket`.
    type JsBucket;
    #[wasm_bindgen(method, catch)]
    fn get(this: &JsBucket, key: &str, options: &JsValue) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn head(this: &JsBucket, key: &str) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn delete(this: &JsBucket, key: &str) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn list(this: &JsBucket, options: &JsValue) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn put(
        this: &JsBucket,
        key: &str,
        value: &JsValue,
        options: &JsValue,
    ) -> Result<Promise, JsValue>;

    /// A `ReadableStream` (an object body).
    type JsStream;
    #[wasm_bindgen(method, catch, js_name = getReader)]
    fn get_reader(this: &JsStream) -> Result<JsReader, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn cancel(this: &JsStream) -> Result<Promise, JsValue>;

    /// Its default reader.
    type JsReader;
    #[wasm_bindgen(method, catch)]
    fn read(this: &JsReader) -> Result<Promise, JsValue>;

    /// The runtime's `FixedLengthStream`: a stream whose length R2 knows up front.
    type FixedLengthStream;
    #[wasm_bindgen(constructor, catch)]
    fn new(length: f64) -> Result<FixedLengthStream, JsValue>;
    #[wasm_bindgen(method, getter)]
    fn readable(this: &FixedLengthStream) -> JsValue;
    #[wasm_bindgen(method, getter)]
    fn writable(this: &FixedLengthStream) -> JsWritable;

    /// Its writable side.
    type JsWritable;
    #[wasm_bindgen(method, catch, js_name = getWriter)]
    fn get_writer(this: &JsWritable) -> Result<JsWriter, JsValue>;

    /// Its writer.
    type JsWriter;
    #[wasm_bindgen(method, catch)]
    fn write(this: &JsWriter, chunk: &Uint8Array) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn close(this: &JsWriter) -> Result<Promise, JsValue>;

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
}

/// Writes `bytes` to `writer` in [`UPLOAD_CHUNK_BYTES`] chunks and closes it; false if the
/// reader stopped taking them.
async fn write_chunks(writer: &JsWriter, bytes: &[u8]) -> bool {
    for chunk in bytes.chunks(UPLOAD_CHUNK_BYTES) {
        // Copied out of wasm memory synchronously, one chunk at a time: the view never
        // lives across an await, so memory growth cannot detach it.
        let view = Uint8Array::new_with_length(chunk.len() as u32);
        view.copy_from(chunk);
        let written = match writer.write(&view) {
            Ok(promise) => JsFuture::from(promise).await.is_ok(),
            Err(_) => false,
        };
        if !written {
            return false;
        }
    }
    match writer.close() {
        Ok(promise) => JsFuture::from(promise).await.is_ok(),
        Err(_) => false,
    }
}

/// A response body that streams the image of `conn` out of wasm memory in chunks (at most one
/// chunk in JS at a time), and hands the connection to `then` (back to the cache) as soon as
/// its last chunk is copied out, before that chunk's write and the close are awaited: those
/// may never settle once the response is done, and the image must not wait on them (a pending
/// task holding it is memory the isolate never gets back). An export never changes the image,
/// so the copy goes back whether or not the client read it all.
pub(crate) fn stream_image(
    mut conn: rusqlite::Connection,
    then: impl FnOnce(rusqlite::Connection) + 'static,
) -> Result<worker::web_sys::ReadableStream, Error> {
    let fail = |e: JsValue| Error::Internal {
        detail: format!("streaming the export failed: {e:?}"),
    };
    let len = crate::sqlite::export(&mut conn)?.len();
    let stream = FixedLengthStream::new(len as f64).map_err(fail)?;
    let readable = stream.readable();
    let writer = stream.writable().get_writer().map_err(fail)?;
    wasm_bindgen_futures::spawn_local(async move {
        let mut conn = Some(conn);
        let mut then = Some(then);
        let mut offset = 0;
        loop {
            // Copied out of wasm memory synchronously, one chunk at a time: the view never
            // lives across an await, so memory growth cannot detach it.
            let Some(view) = conn.as_mut().and_then(|c| {
                let bytes = crate::sqlite::export(c).ok()?;
                let chunk = bytes.get(offset..(offset + UPLOAD_CHUNK_BYTES).min(len))?;
                let view = Uint8Array::new_with_length(chunk.len() as u32);
                view.copy_from(chunk);
                Some(view)
            }) else {
                return;
            };
            offset += view.length() as usize;
            if offset >= len
                && let (Some(c), Some(f)) = (conn.take(), then.take())
            {
                f(c);
            }
            let written = match writer.write(&view) {
                Ok(promise) => JsFuture::from(promise).await.is_ok(),
                Err(_) => false,
            };
            if !written {
                return;
            }
            if offset >= len {
                if let Ok(promise) = writer.close() {
                    let _ = JsFuture::from(promise).await;
                }
                return;
            }
        }
    });
    Ok(readable.unchecked_into())
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

/// An object body not yet read: its stream and its size.
pub(crate) struct JsBody {
    stream: JsStream,
    size: usize,
}

impl Body for JsBody {
    fn len(&self) -> usize {
        self.size
    }

    /// Each chunk is copied into `dst` as it arrives, synchronously: the copy makes its view of
    /// wasm memory and is done with it before the next await, so memory growth by another
    /// request in the isolate can never detach a view in use.
    async fn read_into(self, dst: &mut [u8]) -> Result<(), StoreError> {
        let fail = |e: &JsValue| store_error("get body", e);
        let reader = self.stream.get_reader().map_err(|e| fail(&e))?;
        let mut filled = 0;
        loop {
            let result = JsFuture::from(reader.read().map_err(|e| fail(&e))?)
                .await
                .map_err(|e| fail(&e))?;
            if Reflect::get(&result, &"done".into())
                .map_err(|e| fail(&e))?
                .is_truthy()
            {
                break;
            }
            let chunk: Uint8Array = Reflect::get(&result, &"value".into())
                .map_err(|e| fail(&e))?
                .unchecked_into();
            let n = chunk.length() as usize;
            let Some(slot) = dst.get_mut(filled..filled + n) else {
                return Err(StoreError::new(
                    "get body",
                    StoreErrorKind::Transient,
                    format!("the body ran past its size of {} bytes", dst.len()),
                ));
            };
            chunk.copy_to(slot);
            filled += n;
        }
        if filled != dst.len() {
            return Err(StoreError::new(
                "get body",
                StoreErrorKind::Transient,
                format!("the body ended after {filled} of {} bytes", dst.len()),
            ));
        }
        Ok(())
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
            let object: JsObject = value.unchecked_into();
            return Ok(Fetched::NotModified {
                metadata: metadata_map(&object.custom_metadata()),
            });
        }
        let object: JsObject = value.unchecked_into();
        // `get` resolves once the metadata has arrived; the body is still an unread stream,
        // so an oversize object is refused here without downloading it.
        // Float-to-int `as` saturates; R2 sizes are whole numbers.
        let size_bytes = object.size() as u64;
        let stream: JsStream = object.body().unchecked_into();
        if size_bytes > max_bytes {
            // Best effort: an unread stream is released with the request anyway.
            let _ = stream.cancel();
            return Ok(Fetched::TooLarge { size_bytes });
        }
        Ok(Fetched::Found(StoredObject {
            etag: object.etag(),
            metadata: metadata_map(&object.custom_metadata()),
            body: JsBody {
                stream,
                size: usize::try_from(size_bytes).unwrap_or(usize::MAX),
            },
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
        let length = u32::try_from(bytes.len()).map_err(|_| {
            StoreError::new("put", StoreErrorKind::Permanent, "object larger than 4 GiB")
        })?;
        let stream = FixedLengthStream::new(f64::from(length)).map_err(fail)?;
        let upload = JsFuture::from(
            self.bucket
                .put(key, &stream.readable(), &options)
                .map_err(fail)?,
        );
        let writer = stream.writable().get_writer().map_err(fail)?;
        // If R2 stops reading (a failed condition, or an error), its answer says which.
        write_chunks(&writer, bytes).await;
        let stored = upload.await.map_err(fail)?;
        if stored.is_null() || stored.is_undefined() {
            return Ok(PutOutcome::ConditionFailed);
        }
        let stored: JsObject = stored.unchecked_into();
        Ok(PutOutcome::Stored {
            etag: stored.etag(),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let promise = self
            .bucket
            .delete(key)
            .map_err(|e| store_error("delete", &e))?;
        JsFuture::from(promise)
            .await
            .map_err(|e| store_error("delete", &e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let fail = |e: JsValue| store_error("list", &e);
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let options = Object::new();
            Reflect::set(&options, &"prefix".into(), &JsValue::from_str(prefix)).map_err(fail)?;
            if let Some(c) = &cursor {
                Reflect::set(&options, &"cursor".into(), &JsValue::from_str(c)).map_err(fail)?;
            }
            let page = JsFuture::from(self.bucket.list(&options).map_err(fail)?)
                .await
                .map_err(fail)?;
            let objects = Reflect::get(&page, &"objects".into()).map_err(fail)?;
            for object in js_sys::Array::from(&objects).iter() {
                let key = Reflect::get(&object, &"key".into())
                    .ok()
                    .and_then(|k| k.as_string())
                    .unwrap_or_default();
                let size = Reflect::get(&object, &"size".into())
                    .ok()
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0);
                let uploaded = Reflect::get(&object, &"uploaded".into())
                    .ok()
                    .map(|d| js_sys::Date::from(d).get_time())
                    .unwrap_or(0.0);
                // Float-to-int `as` saturates; sizes and times are whole numbers.
                out.push(Listed {
                    key,
                    size: size as u64,
                    uploaded_ms: uploaded as u64,
                });
            }
            let truncated = Reflect::get(&page, &"truncated".into())
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            cursor = Reflect::get(&page, &"cursor".into())
                .ok()
                .and_then(|v| v.as_string());
            if !truncated || cursor.is_none() {
                return Ok(out);
            }
        }
    }
}

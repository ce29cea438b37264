// R2 and the Durable Object hop as production behaves, for tests and benches only: wrappers
// around the real bindings that inject what a named model file says (latency by size with
// jitter, one write per second per key with 429 beyond, transient 5xx, the DO round trip) and
// count everything they injected. The worker's Rust code sees the real binding's results.

/** R2 error messages as the Workers API throws them: the code ends the message, which is
 * what src/runtime/r2.rs classifies (10058 rate limited, 10001 transient). */
const TOO_MANY_REQUESTS = "Reduce your concurrent request rate for the same object. (10058)";
const INTERNAL_ERROR = "We encountered an internal error. Please try again. (10001)";

/** A small seeded generator (mulberry32), so a run's jitter and faults can be replayed. */
function generator(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms) => (ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve());

/** The [low, high] band (ms) for an object of `bytes` from a size table: linear between rows,
 * the smallest row below it, the last two rows' slope past the largest. */
export function band(table, bytes) {
  const rows = table.by_size;
  if (bytes <= rows[0].bytes) return rows[0].ms;
  for (let k = 1; k < rows.length; k++) {
    if (bytes <= rows[k].bytes || k === rows.length - 1) {
      const [a, b] = [rows[k - 1], rows[k]];
      const f = (bytes - a.bytes) / (b.bytes - a.bytes);
      return [0, 1].map((i) => a.ms[i] + f * (b.ms[i] - a.ms[i]));
    }
  }
  return rows[rows.length - 1].ms;
}

/** What one model injects into one workerd process, and the counts of what it did. */
export class Model {
  constructor(spec, vars) {
    this.spec = spec;
    this.seed = Number(vars.R2_MODEL_SEED ?? Math.floor(Math.random() * 2 ** 31));
    this.random = generator(this.seed);
    const hop = spec.do_hop_ms;
    const chosen = vars.R2_MODEL_DO_HOP_MS === undefined ? hop.default : Number(vars.R2_MODEL_DO_HOP_MS);
    if (!hop.choices.includes(chosen)) {
      throw new Error(`R2_MODEL_DO_HOP_MS ${vars.R2_MODEL_DO_HOP_MS} is not one of ${hop.choices}`);
    }
    this.doHopMs = chosen;
    // The model's rate unless a test raises it (`POST /__model/faults`) to see faults fire.
    this.transientRate = spec.transient_5xx.rate;
    // Per key: when its last write was let through (ms since the epoch).
    this.lastWrite = new Map();
    this.stats = {
      calls: { get: 0, put: 0, head: 0, list: 0, delete: 0, do_fetch: 0 },
      rate_limited: 0,
      transient: { before: 0, lost_answer: 0 },
      delayed_calls: 0,
      delay_ms_total: 0,
      do_hops: 0,
    };
  }

  /** A delay (ms) drawn from a [low, high] band. */
  draw([low, high]) {
    return low + this.random() * (high - low);
  }

  /** `body` delivered after `ms` (the transfer time); cancelling it cancels the real one. */
  delayedStream(body, ms) {
    const { readable, writable } = new TransformStream();
    const model = this;
    (async () => {
      await model.delay(ms);
      await body.pipeTo(writable);
    })().catch(() => body.cancel().catch(() => {}));
    return readable;
  }

  async delay(ms) {
    if (ms <= 0) return;
    this.stats.delayed_calls += 1;
    this.stats.delay_ms_total += ms;
    await sleep(ms);
  }

  /** The latency of `op` for an object of `bytes`: sized for get and put, fixed otherwise. */
  latency(op, bytes) {
    const entry = this.spec[op];
    return entry.by_size ? this.draw(band(entry, bytes)) : this.draw(entry.ms);
  }

  /** Whether this call fails with a transient 5xx, and if so whether after doing its work. */
  fault() {
    const t = this.spec.transient_5xx;
    if (!(this.random() < this.transientRate)) return null;
    return this.random() < t.lost_answer_share ? "lost_answer" : "before";
  }

  /** True if a write to `key` now goes past the per-key rate; otherwise takes the key's slot. */
  limited(key) {
    const rule = this.spec.write_rate;
    if (!rule.min_interval_ms) return false;
    const now = Date.now();
    const last = this.lastWrite.get(key);
    if (last !== undefined && now - last < rule.min_interval_ms) return true;
    this.lastWrite.set(key, now);
    return false;
  }
}

/** An `R2ObjectBody` whose body is another stream; everything else is the real object's. */
class ObjectBody {
  constructor(object, body) {
    this.object = object;
    this.body = body;
  }
  get key() { return this.object.key; }
  get version() { return this.object.version; }
  get size() { return this.object.size; }
  get etag() { return this.object.etag; }
  get httpEtag() { return this.object.httpEtag; }
  get uploaded() { return this.object.uploaded; }
  get httpMetadata() { return this.object.httpMetadata; }
  get customMetadata() { return this.object.customMetadata; }
  get checksums() { return this.object.checksums; }
  get range() { return this.object.range; }
  get bodyUsed() { return this.body.locked; }
  writeHttpMetadata(headers) { return this.object.writeHttpMetadata(headers); }
  arrayBuffer() { return new Response(this.body).arrayBuffer(); }
  text() { return new Response(this.body).text(); }
  json() { return new Response(this.body).json(); }
  blob() { return new Response(this.body).blob(); }
}

/** Every byte of a put's value (a stream, a buffer, a string or null). Read before anything is
 * refused: a writer streaming into a `FixedLengthStream` would otherwise wait for ever. */
async function bytesOf(value) {
  if (value === null || value === undefined) return new Uint8Array(0);
  if (typeof value === "string") return new TextEncoder().encode(value);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return new Uint8Array(await new Response(value).arrayBuffer());
}

/** The R2 binding with the model in between. workers-rs checks a binding by its class name,
 * so this class must be called `R2Bucket`. */
export class R2Bucket {
  constructor(inner, model) {
    this.inner = inner;
    this.model = model;
  }

  async #transient(op) {
    const fault = this.model.fault();
    if (fault === "before") {
      this.model.stats.transient.before += 1;
      await this.model.delay(this.model.latency("head", 0));
      throw new Error(`${op}: ${INTERNAL_ERROR}`);
    }
    return fault;
  }

  async get(key, options) {
    this.model.stats.calls.get += 1;
    const fault = await this.#transient("get");
    const object = await this.inner.get(key, options);
    // The answer (metadata) arrives after a metadata read's latency; an object answered
    // without a body (missing, or a failed onlyIf) costs only that.
    const total = object !== null && "body" in object ? this.model.latency("get", object.size) : 0;
    const first = Math.min(this.model.latency("head", 0), total || Infinity);
    await this.model.delay(first);
    if (fault === "lost_answer") {
      this.model.stats.transient.lost_answer += 1;
      throw new Error(`get: ${INTERNAL_ERROR}`);
    }
    if (total === 0) return object;
    // The rest of the transfer is paid by whoever reads the body, and only if they do: a
    // caller that looks at the metadata and cancels the body (an object too large, a user
    // who lives elsewhere) is answered as fast as R2 would answer it.
    return new ObjectBody(object, this.model.delayedStream(object.body, total - first));
  }

  async head(key) {
    this.model.stats.calls.head += 1;
    const fault = await this.#transient("head");
    const object = await this.inner.head(key);
    await this.model.delay(this.model.latency("head", 0));
    if (fault === "lost_answer") {
      this.model.stats.transient.lost_answer += 1;
      throw new Error(`head: ${INTERNAL_ERROR}`);
    }
    return object;
  }

  async put(key, value, options) {
    this.model.stats.calls.put += 1;
    const bytes = await bytesOf(value);
    if (this.model.limited(key)) {
      this.model.stats.rate_limited += 1;
      await this.model.delay(this.model.latency("head", 0));
      throw new Error(`put: ${TOO_MANY_REQUESTS}`);
    }
    const fault = await this.#transient("put");
    // The upload's time passes before the object is visible, as it would in transit.
    await this.model.delay(this.model.latency("put", bytes.byteLength));
    const stored = await this.inner.put(key, bytes, options);
    if (fault === "lost_answer") {
      // Written, but the answer never arrives: the worker must find out by reading back.
      this.model.stats.transient.lost_answer += 1;
      throw new Error(`put: ${INTERNAL_ERROR}`);
    }
    return stored;
  }

  async delete(keys) {
    this.model.stats.calls.delete += 1;
    const fault = await this.#transient("delete");
    await this.model.delay(this.model.latency("delete", 0));
    await this.inner.delete(keys);
    if (fault === "lost_answer") {
      this.model.stats.transient.lost_answer += 1;
      throw new Error(`delete: ${INTERNAL_ERROR}`);
    }
  }

  async list(options) {
    this.model.stats.calls.list += 1;
    const fault = await this.#transient("list");
    const page = await this.inner.list(options);
    await this.model.delay(this.model.latency("list", 0));
    if (fault === "lost_answer") {
      this.model.stats.transient.lost_answer += 1;
      throw new Error(`list: ${INTERNAL_ERROR}`);
    }
    return page;
  }
}

/** A Durable Object stub whose `fetch` costs the model's round trip. */
class Stub {
  constructor(inner, model) {
    this.inner = inner;
    this.model = model;
  }

  async fetch(...args) {
    this.model.stats.calls.do_fetch += 1;
    this.model.stats.do_hops += 1;
    // Half the round trip on the way there, half on the way back.
    await this.model.delay(this.model.doHopMs / 2);
    const response = await this.inner.fetch(...args);
    await this.model.delay(this.model.doHopMs / 2);
    return response;
  }
}

/** The Durable Object namespace binding with the model's hop; workers-rs checks this class
 * name too. */
export class DurableObjectNamespace {
  constructor(inner, model) {
    this.inner = inner;
    this.model = model;
  }

  idFromName(name) {
    return this.inner.idFromName(name);
  }

  idFromString(id) {
    return this.inner.idFromString(id);
  }

  newUniqueId(options) {
    return this.inner.newUniqueId(options);
  }

  get(id, options) {
    return new Stub(this.inner.get(id, options), this.model);
  }
}

/** `env` with both bindings behind the model (the model's own vars left in: the worker reads
 * only the names it knows). */
export function modelledEnv(env, model) {
  return {
    ...env,
    USER_DATA: new R2Bucket(env.USER_DATA, model),
    USER_DB: new DurableObjectNamespace(env.USER_DB, model),
  };
}

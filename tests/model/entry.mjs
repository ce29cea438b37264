// The worker under an R2 model, for tests and benches only (`wrangler dev --config
// tests/model/wrangler.toml`): the production bundle (build/index.js) is imported unchanged
// and called with `env.USER_DATA` and `env.USER_DB` wrapped by the model named in `R2_MODEL`.
//
// `MODEL_ISOLATES = "2"` serves requests from two copies of the worker, each its own module
// and its own wasm instance (its own version cache, write queues and memory), sharing the one
// local R2 and the Durable Object namespace: requests alternate between them, or go to the
// copy named by an `X-Model-Isolate: 0|1` request header. Every answer says which copy served
// it in `X-Model-Isolate`. `GET /__model/stats` answers what the model injected so far;
// `POST /__model/faults?rate=R` sets the transient 5xx rate from then on (tests only).
import Worker0, { UserDb as UserDb0 } from "../../build/index.js";
// A byte-identical copy of build/ (made by this config's build command): a second module, so a
// second wasm instance with memory of its own.
import Worker1 from "../../target/model-isolate/index.js";
import { Model, modelledEnv } from "./model.mjs";
import local from "./models/local.json";
import spec from "./models/spec.json";

const MODELS = { local, spec };
const COPIES = [Worker0, Worker1];

let model = null;
let next = 0;
const served = [0, 0];

function modelFor(env) {
  if (model === null) {
    const name = env.R2_MODEL ?? "local";
    const chosen = MODELS[name];
    if (!chosen) throw new Error(`R2_MODEL ${name} is not one of ${Object.keys(MODELS)}`);
    model = new Model(chosen, env);
  }
  return model;
}

function isolates(env) {
  const n = Number(env.MODEL_ISOLATES ?? "1");
  if (n !== 1 && n !== 2) throw new Error(`MODEL_ISOLATES ${env.MODEL_ISOLATES} is not 1 or 2`);
  return n;
}

export default {
  async fetch(request, env, ctx) {
    const m = modelFor(env);
    const n = isolates(env);
    const url = new URL(request.url);
    if (url.pathname === "/__model/faults" && request.method === "POST") {
      // Test-only: another transient 5xx rate from now on (`?rate=0.05`), to see faults fire.
      const rate = Number(url.searchParams.get("rate"));
      if (!(rate >= 0 && rate <= 1)) {
        return Response.json({ success: false, error: { code: "bad_request", message: "rate must be within 0..1" } }, { status: 400 });
      }
      m.transientRate = rate;
    }
    if (url.pathname === "/__model/stats" || url.pathname === "/__model/faults") {
      return Response.json({
        model: m.spec.name,
        seed: m.seed,
        do_hop_ms: m.doHopMs,
        transient_rate: m.transientRate,
        isolates: n,
        served_by_isolate: served.slice(0, n),
        ...m.stats,
      });
    }
    const asked = request.headers.get("x-model-isolate");
    let copy;
    if (asked === null) {
      copy = next % n;
      next += 1;
    } else {
      copy = Number(asked);
      if (!(copy >= 0 && copy < n)) {
        return Response.json({ success: false, error: { code: "bad_request", message: `X-Model-Isolate ${asked} is not below ${n}` } }, { status: 400 });
      }
    }
    served[copy] += 1;
    const inner = new COPIES[copy](ctx, modelledEnv(env, m));
    const response = await inner.fetch(request);
    // A WebSocket upgrade's response cannot be rebuilt; the worker answers none.
    const tagged = new Response(response.body, response);
    tagged.headers.set("X-Model-Isolate", String(copy));
    return tagged;
  },
};

/** The Durable Object class, with its own bindings behind the same model. */
export class UserDb extends UserDb0 {
  constructor(state, env) {
    super(state, modelledEnv(env, modelFor(env)));
  }
}

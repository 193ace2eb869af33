/**
 * Input checking shared by every resource: JSON Schema validation with ajv, messages that name the field and the
 * fix, and tolerance of values that are not known yet during `pulumi preview`.
 */
import * as fs from "fs";
import * as path from "path";
import Ajv2020, { ValidateFunction } from "ajv/dist/2020";
import { dotted, schemaProblems } from "./schemaErrors";

/** What the engine sends for an input whose value is not known yet (a preview of a value computed on apply). */
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

/** One reason a resource's inputs are refused, reported by `pulumi preview` against `property`. */
export interface CheckFailure {
    property: string;
    reason: string;
}

export interface CheckResult<T> {
    inputs: T;
    failures: CheckFailure[];
}

/** What every resource's diff answers (the dynamic provider passes these three on; `stables` are dropped). */
export interface DiffResult {
    changes: boolean;
    replaces: string[];
    deleteBeforeReplace: boolean;
}

export function isUnknown(v: unknown): boolean {
    return v === UNKNOWN;
}

/** True when `v` or anything inside it is not known yet. */
export function containsUnknown(v: unknown): boolean {
    if (v === UNKNOWN) return true;
    if (Array.isArray(v)) return v.some(containsUnknown);
    if (v && typeof v === "object") return Object.values(v).some(containsUnknown);
    return false;
}

/** The package's own directory (where package.json and schema/ are), from compiled or source code alike. */
export function packageRoot(): string {
    let dir = __dirname;
    for (;;) {
        const pj = path.join(dir, "package.json");
        if (fs.existsSync(pj) && JSON.parse(fs.readFileSync(pj, "utf8")).name === "pulumi-vfio") return dir;
        const up = path.dirname(dir);
        if (up === dir) throw new Error("cannot find the pulumi-vfio package root (package.json)");
        dir = up;
    }
}

let ajv: Ajv2020 | undefined;

/** One ajv instance with every schema in schema/ registered by its file name. */
export function schemas(): Ajv2020 {
    if (!ajv) {
        ajv = new Ajv2020({ allErrors: true, strict: false, useDefaults: true });
        const dir = path.join(packageRoot(), "schema");
        for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".schema.json")).sort()) {
            ajv.addSchema(JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")), f);
        }
    }
    return ajv;
}

/**
 * The `default` a schema in schema/ gives a property: the one place a default is written. `at` is a dotted property
 * path (`cpu.sockets`, through nested `properties`) or a JSON pointer (`/$defs/disk/oneOf/1/properties/bus`).
 * validate() fills the same values in (ajv's useDefaults); this is for the paths that see inputs validate() did not
 * fill: outputs from an older state, diff against news with unknowns, read. Returns a copy (a default `[]` stays
 * the schema's). Throws when the schema has no default there, so a mistyped path fails on first use rather than
 * reading as undefined.
 */
export function schemaDefault<T = unknown>(schemaFile: string, at: string): T {
    // The very object ajv validates with (ajv keeps the schema it was given), so the two cannot disagree.
    let node: any = validator(schemaFile).schema;
    const steps = at.startsWith("/") ? at.split("/").slice(1) : at.split(".").flatMap((k) => ["properties", k]);
    for (const step of steps) node = node?.[step];
    if (node === undefined || !("default" in node)) throw new Error(`${schemaFile} gives no default at ${at}`);
    return structuredClone(node.default) as T;
}

export function validator(schemaFile: string): ValidateFunction {
    const v = schemas().getSchema(schemaFile);
    if (!v) throw new Error(`no schema ${schemaFile}`);
    return v;
}

function at(obj: unknown, instancePath: string): unknown {
    let cur: any = obj;
    for (const p of instancePath.split("/").filter(Boolean)) {
        if (cur === undefined || cur === null) return undefined;
        cur = cur[p.replace(/~1/g, "/").replace(/~0/g, "~")];
    }
    return cur;
}

/**
 * Validate `inputs` against a schema (applying its defaults), skipping complaints about values that are unknown in
 * a preview. The special `__provider` input is not the user's and is left out. Each failure's reason is
 * `<property>: <message>`, the message from provider/schemaErrors (what the field is, an example, did you mean).
 */
export function validate<T>(schemaFile: string, news: Record<string, unknown>): CheckResult<T> {
    const inputs: Record<string, unknown> = JSON.parse(JSON.stringify(news ?? {}));
    const provider = inputs.__provider;
    delete inputs.__provider;
    const v = validator(schemaFile);
    v(inputs);
    // Skip complaints about values not known yet, and a branch's type complaint (or the oneOf's) about an object or
    // list that is only partly known (its known parts are checked by the other branch; the rest is checked when known).
    const errors = (v.errors ?? []).filter((e) => !pathHasUnknown(inputs, e.instancePath) && !(["type", "oneOf", "anyOf"].includes(e.keyword) && containsUnknown(at(inputs, e.instancePath))));
    const failures: CheckFailure[] = schemaProblems(errors, inputs, { ajv: schemas(), schema: schemaFile }).map((p) => {
        const property = dotted(p.field) || "(inputs)";
        return { property, reason: `${property}: ${p.message}` };
    });
    if (provider !== undefined) inputs.__provider = provider;
    return { inputs: inputs as T, failures };
}

function pathHasUnknown(obj: unknown, instancePath: string): boolean {
    const parts = instancePath.split("/").filter(Boolean);
    for (let i = 0; i <= parts.length; i++) {
        if (isUnknown(at(obj, "/" + parts.slice(0, i).join("/")))) return true;
    }
    return false;
}

/** Strip the engine's bookkeeping from a props/outputs object. */
export function withoutProvider<T extends object>(o: T): T {
    const c: any = { ...o };
    delete c.__provider;
    return c;
}

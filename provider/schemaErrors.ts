/**
 * ajv's errors in words: the one formatter behind every resource's `check` (provider/check.ts) and the host.yaml
 * loader (sdk/hostDefinition). A message names what was found, what the field is (its schema `description`), an
 * example (its schema `examples`) and the fix; an unknown key gets the closest allowed key. Where a message goes
 * (a resource property, or a file:line:column) is the caller's business: problems come back as paths.
 */
import type Ajv2020 from "ajv/dist/2020";
import type { ErrorObject } from "ajv/dist/2020";

export type Segment = string | number;

/** One schema error, formatted. */
export interface SchemaProblem {
    /** Where the message points: the offending value, or for an unknown key that key, for a missing one its map. */
    segments: Segment[];
    /** Whether the key at `segments` is at fault (unknown, misnamed, missing inside it) rather than its value. */
    at: "key" | "value";
    /** The field the problem is about (for `required`, the missing key), as a resource's check names it. */
    field: Segment[];
    /** Without the path: `must be an integer, not "8 GiB". Guest memory in MiB. For example: 16384.` */
    message: string;
}

export interface FormatOptions {
    /** The ajv instance holding the validated schema and every schema it refers to (for descriptions and keys). */
    ajv: Ajv2020;
    /** The key or `$id` the data was validated against. */
    schema: string;
    /** The text a value was written as, when known (YAML reads `0660` as the number 660: the hint says "quote it"). */
    source?: (segments: Segment[]) => string | undefined;
    /** A message of the caller's own for one problem (or undefined for the usual one). */
    override?: (e: ErrorObject, segments: Segment[]) => string | undefined;
}

/** `["vms","win11","devices",0]` → `vms.win11.devices[0]`. */
export function dotted(segments: Segment[]): string {
    return segments.map((s, i) => (typeof s === "number" ? `[${s}]` : i === 0 ? s : `.${s}`)).join("");
}

/** An ajv instancePath (`/vms/a~1b/devices/0`) as segments. */
function segmentsOf(instancePath: string): Segment[] {
    return instancePath
        .split("/")
        .filter(Boolean)
        .map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"))
        .map((p) => (/^\d+$/.test(p) ? Number(p) : p));
}

/** A resource property as check names it (`cpu.pinning`, `attrs[0].name`) as segments. */
export function segmentsOfProperty(property: string): Segment[] {
    return property
        .split(/\.|(?=\[)/)
        .filter(Boolean)
        .map((p) => (/^\[\d+\]$/.test(p) ? Number(p.slice(1, -1)) : p));
}

const CONTAINERS = ["oneOf", "anyOf", "allOf", "if", "then", "else", "propertyNames"];

/** Every error of one validation, formatted, without repeats, in ajv's order. */
export function schemaProblems(errors: ErrorObject[], data: unknown, opts: FormatOptions): SchemaProblem[] {
    const out: SchemaProblem[] = [];
    const seen = new Set<string>();
    for (const e of relevantErrors(errors)) {
        const p = schemaProblem(e, data, opts);
        const key = `${dotted(p.segments)}\n${p.message}`;
        if (seen.has(key)) continue;
        seen.add(key);
        out.push(p);
    }
    return out;
}

/**
 * A value that may be a string or an object (oneOf) gets a `type` error from each branch it is not. When another
 * error explains the value (the string breaks its pattern, the object has a typo'd key), the type errors are noise;
 * when none does, they merge into one "must be a string or a map". The branch containers (oneOf, anyOf) only
 * repeat what their branches said.
 */
function relevantErrors(errors: ErrorObject[]): ErrorObject[] {
    const plain = errors.filter((e) => !CONTAINERS.includes(e.keyword) || e.propertyName !== undefined);
    const out: ErrorObject[] = [];
    const merged = new Set<string>();
    for (const e of plain) {
        if (e.keyword !== "type") {
            out.push(e);
            continue;
        }
        const prefix = e.instancePath + "/";
        if (plain.some((o) => o.keyword !== "type" && (o.instancePath === e.instancePath || o.instancePath.startsWith(prefix)))) continue;
        if (merged.has(e.instancePath)) continue;
        merged.add(e.instancePath);
        const types = [...new Set(plain.filter((o) => o.keyword === "type" && o.instancePath === e.instancePath).map((o) => String(o.params.type)))];
        out.push({ ...e, params: { type: types.join(" or ") } });
    }
    // A oneOf/anyOf no branch of which produced an error of its own (every branch is a `required`/`not`): say so.
    for (const e of errors) {
        if ((e.keyword === "oneOf" || e.keyword === "anyOf") && !out.some((o) => o.instancePath === e.instancePath || o.instancePath.startsWith(e.instancePath + "/"))) out.push(e);
    }
    return out;
}

/** A value as a message quotes it. */
function describeValue(v: unknown): string {
    return v === null ? "null" : Array.isArray(v) ? "a list" : typeof v === "object" ? "a map" : typeof v === "string" ? JSON.stringify(v) : String(v);
}

const TYPE_WORDS: Record<string, string> = { object: "a map", array: "a list", integer: "an integer", number: "a number", string: "a string", boolean: "true or false", null: "empty" };

function valueAt(data: unknown, segs: Segment[]): unknown {
    let cur: any = data;
    for (const s of segs) {
        if (cur === null || cur === undefined) return undefined;
        cur = cur[s];
    }
    return cur;
}

function schemaProblem(e: ErrorObject, data: unknown, opts: FormatOptions): SchemaProblem {
    const segs = segmentsOf(e.instancePath);
    const value = valueAt(data, segs);
    const make = (s: Segment[], at: "key" | "value", message: string, field: Segment[] = s): SchemaProblem => ({ segments: s, at, field, message: opts.override?.(e, s) ?? message });
    const doc = (s: Segment[], rule?: string) => fieldDoc(opts, s, rule);
    if (e.propertyName !== undefined) {
        const s = [...segs, e.propertyName];
        return make(s, "key", `${JSON.stringify(e.propertyName)} is not a valid name: use letters, digits, '_' and '-', starting with a letter or digit (at most 63 characters)`);
    }
    switch (e.keyword) {
        case "additionalProperties": {
            const key = String(e.params.additionalProperty);
            const allowed = allowedKeys(opts, segs);
            const guess = closest(key, allowed);
            return make([...segs, key], "key", `unknown key ${JSON.stringify(key)}${guess ? `; did you mean ${JSON.stringify(guess)}?` : ""}${allowed.length ? ` (allowed here: ${allowed.join(", ")})` : ""}`);
        }
        case "false schema":
            return make(segs, "key", "not allowed here");
        case "required": {
            const missing = String(e.params.missingProperty);
            const about = fieldDoc(opts, [...segs, missing]);
            return make(segs, "key", `${JSON.stringify(missing)} is required${segs.length ? ` in ${dotted(segs)}` : ""}${about}`, [...segs, missing]);
        }
        case "type": {
            const want = String(e.params.type);
            const source = opts.source?.(segs) ?? String(value);
            const hint = want === "string" && typeof value === "number" ? ` (YAML read ${source} as a number: quote it, "${source}")` : "";
            const wanted = want.split(" or ").map((t) => TYPE_WORDS[t] ?? t).join(" or ");
            return make(segs, "value", `must be ${wanted}, not ${describeValue(value)}${hint}${doc(segs)}`);
        }
        case "pattern":
        case "format":
            return make(segs, "value", `${describeValue(value)} is not a valid ${fieldName(segs)}${doc(segs, e.keyword) || ` (it must match ${e.params.pattern})`}`);
        case "enum":
        case "const": {
            const allowed = (e.keyword === "enum" ? (e.params.allowedValues as unknown[]) : [e.params.allowedValue]).map((x) => JSON.stringify(x));
            const guess = typeof value === "string" ? closest(value, allowed.map((a) => JSON.parse(a)).filter((a): a is string => typeof a === "string")) : undefined;
            return make(segs, "value", `must be ${allowed.length === 1 ? allowed[0] : `one of ${allowed.join(", ")}`}, not ${describeValue(value)}${guess ? `; did you mean ${JSON.stringify(guess)}?` : ""}`);
        }
        case "minimum":
        case "maximum":
        case "exclusiveMinimum":
        case "exclusiveMaximum":
            return make(segs, "value", `must be ${e.params.comparison} ${e.params.limit}, not ${describeValue(value)}`);
        case "minLength":
            return make(segs, "value", e.params.limit === 1 ? "must not be empty" : `must be at least ${e.params.limit} characters long`);
        case "maxLength":
            return make(segs, "value", `must be at most ${e.params.limit} characters long, not ${String(value).length}`);
        case "minItems":
        case "maxItems":
            return make(segs, "value", `must list ${e.keyword === "minItems" ? "at least" : "at most"} ${e.params.limit}, not ${Array.isArray(value) ? value.length : describeValue(value)}`);
        case "oneOf":
        case "anyOf":
            return make(segs, "value", `${describeValue(value)} matches ${Array.isArray(e.params.passingSchemas) ? "more than one" : "none"} of the allowed forms${doc(segs)}`);
        default:
            return make(segs, "value", e.message ?? e.keyword);
    }
}

/** What a message calls the field at a path: its key, or for a list item `<list> entry`. */
function fieldName(segs: Segment[]): string {
    const last = segs[segs.length - 1];
    if (typeof last === "string") return last;
    const list = segs[segs.length - 2];
    return typeof list === "string" ? `${list} entry` : "value";
}

// ------------------------------------------------------------------------------------------------ the schema at a path

type Schema = Record<string, any> | boolean;
type Located = { schema: Schema; base: string };

function resolveRef(ajv: Ajv2020, ref: string, base: string): Located | undefined {
    const [file, pointer = ""] = ref.split("#");
    const id = file ? new URL(file, base).href : base;
    const root = ajv.getSchema(id)?.schema as Schema | undefined;
    if (root === undefined) return undefined;
    let cur: any = root;
    for (const p of pointer.split("/").filter(Boolean)) cur = cur?.[p.replace(/~1/g, "/").replace(/~0/g, "~")];
    return cur === undefined ? undefined : { schema: cur, base: id };
}

/** Every schema that applies at a path, the property's own first (then its $ref and oneOf branches). */
function schemasAt(opts: FormatOptions, segs: Segment[]): Located[] {
    const expand = (s: Located): Located[] => {
        if (typeof s.schema !== "object") return [s];
        const out = [s];
        if (typeof s.schema.$ref === "string") {
            const r = resolveRef(opts.ajv, s.schema.$ref, s.base);
            if (r) out.push(...expand(r));
        }
        for (const k of ["oneOf", "anyOf", "allOf"]) for (const b of s.schema[k] ?? []) out.push(...expand({ schema: b, base: s.base }));
        return out;
    };
    const root = opts.ajv.getSchema(opts.schema)?.schema as Record<string, any> | undefined;
    if (!root) return [];
    let cur = expand({ schema: root, base: root.$id ?? opts.schema });
    for (const seg of segs) {
        const next: Located[] = [];
        for (const c of cur) {
            if (typeof c.schema !== "object") continue;
            const sub = typeof seg === "number" ? c.schema.items : (c.schema.properties?.[seg] ?? c.schema.additionalProperties);
            if (sub !== undefined && typeof sub === "object") next.push(...expand({ schema: sub, base: c.base }));
        }
        cur = next;
    }
    return cur;
}

/** The keys a map at a path may have, from the schemas themselves (`$schema` aside). */
function allowedKeys(opts: FormatOptions, segs: Segment[]): string[] {
    const keys = new Set<string>();
    const at = schemasAt(opts, segs);
    for (const s of at) if (typeof s.schema === "object") for (const [k, v] of Object.entries(s.schema.properties ?? {})) if (v !== false) keys.add(k);
    for (const s of at) if (typeof s.schema === "object") for (const [k, v] of Object.entries(s.schema.properties ?? {})) if (v === false) keys.delete(k);
    keys.delete("$schema");
    return [...keys];
}

/**
 * `. <description> For example: <examples>.` for the field at a path, or "" when the schema says nothing. The
 * field's own description comes first; with `rule` (a keyword such as `pattern`), the description of the schema
 * that sets it follows when it is another (`devices[0]`: "the name of an entry under bindings", then what a name is).
 */
function fieldDoc(opts: FormatOptions, segs: Segment[], rule?: string): string {
    const at = schemasAt(opts, segs).filter((s): s is { schema: Record<string, any>; base: string } => typeof s.schema === "object");
    const own = at.map((s) => s.schema.description).find((d): d is string => typeof d === "string");
    const ruled = rule ? at.find((s) => s.schema[rule] !== undefined && typeof s.schema.description === "string")?.schema.description : undefined;
    const description = [own, ruled].filter((d, i, all): d is string => !!d && all.indexOf(d) === i).map((d) => d.replace(/\.?$/, ".")).join(" ");
    const examples = [...new Set(at.flatMap((s) => (Array.isArray(s.schema.examples) ? s.schema.examples : [])).map((x) => JSON.stringify(x)))];
    if (!description && !examples.length) return "";
    const sentence = description ? ` ${description}` : "";
    return `.${sentence}${examples.length ? ` For example: ${examples.join(" or ")}.` : ""}`;
}

// ------------------------------------------------------------------------------------------------ did you mean

function editDistance(a: string, b: string): number {
    const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
    for (let j = 1; j <= b.length; j++) d[0][j] = j;
    for (let i = 1; i <= a.length; i++)
        for (let j = 1; j <= b.length; j++) d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    return d[a.length][b.length];
}

/** The candidate a typo most likely meant, if any is close (a difference of case alone counts as half an edit). */
export function closest(word: string, candidates: string[]): string | undefined {
    let best: string | undefined;
    let bestD = Infinity;
    for (const c of candidates) {
        const d = c.toLowerCase() === word.toLowerCase() ? 0.5 : editDistance(word.toLowerCase(), c.toLowerCase());
        if (d < bestD) {
            best = c;
            bestD = d;
        }
    }
    return best !== undefined && best !== word && bestD <= Math.max(1, Math.floor(word.length / 3)) ? best : undefined;
}

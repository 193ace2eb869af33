/**
 * host.yaml: one GPU-passthrough host described in a file kept in git. {@link loadHostDefinition} parses it with
 * `yaml` (keeping every node's position), validates it against schema/host.schema.json, then checks what a schema
 * cannot: references by name that point nowhere, two VMs claiming one device, two kvmfr devices with one index,
 * names used twice. Every problem names file, line, column and the offending key, so `pulumi preview` stops before
 * anything on the host changes.
 *
 * No Pulumi here (the CLI's `init` validates what it writes with this too).
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Document, LineCounter, Node, isMap, isPair, isScalar, isSeq, parseDocument } from "yaml";
import { ErrorObject } from "ajv/dist/2020";
import { schemas } from "../provider/check";
import { parseAddress } from "../provider/sysfs/pci";

export const HOST_SCHEMA = "host.schema.json";

// ------------------------------------------------------------------------------------------------ types

/** How to reach the host over SSH (no secrets: an ssh-agent, or a key file read when the program runs). */
export interface HostConnection {
    host: string;
    /** Default 22. */
    port?: number;
    /** Default root; others need passwordless sudo. */
    user?: string;
    /** Expected host key (`ssh-ed25519 AAAA...` or `SHA256:...`); unchecked when absent. */
    hostKey?: string;
    /** A private key file on the machine running pulumi; relative paths are relative to the host file. */
    privateKeyFile?: string;
    /** ssh-agent socket. Default SSH_AUTH_SOCK. */
    agentSocketPath?: string;
    /** Seconds per dial attempt. Default 15. */
    perDialTimeout?: number;
    /** Dial attempts. Default 10. */
    dialErrorLimit?: number;
}

/** An IommuBinding's inputs, without the connection (the host's applies). */
export interface BindingEntry {
    device: string | { vendor: string; device: string; subsystemVendor?: string; subsystemDevice?: string; index?: number };
    driver?: string;
    wholeGroup?: boolean;
    allowBootVga?: boolean;
    allowHostCritical?: string[];
    persistent?: boolean;
}

export interface VirtualFunctionsEntry {
    physicalFunction: string;
    count: number;
    autoprobe?: boolean;
}

export interface MdevEntry {
    parent: string;
    type?: string;
    vram?: { min?: number; max?: number };
    uuid?: string;
    attrs?: { name: string; value: string }[];
    persistent?: boolean;
}

export interface KvmfrEntry {
    index: number;
    sizeMb?: number;
    width?: number;
    height?: number;
    hdr?: boolean;
    formula?: "b7" | "current";
    owner?: string;
    group?: string;
    mode?: string;
}

/** A binding a VM passes through: its name under `bindings`, optionally with per-device QEMU options. */
export type VmDeviceRef = string | { binding: string; xVga?: boolean; romfile?: string };
/** An mdev a VM uses: its name under `mdevs`. */
export type VmMdevRef = string | { mdev: string; display?: boolean };
/** VF `index` of the `virtualFunctions` entry `from`. */
export interface VmVirtualFunctionRef {
    from: string;
    index: number;
}

/** A PassthroughVm's inputs, with devices named instead of given. */
export interface VmEntry {
    /** QEMU's -name; default the entry's name. */
    name?: string;
    machine?: string;
    accel?: "kvm" | "tcg";
    cpu?: { model?: string; sockets?: number; cores?: number; threads?: number; pinning?: number[] };
    memoryMb?: number;
    hugepages?: boolean;
    firmware?: { code: string; vars: string };
    disks?: (string | { path: string; format?: "raw" | "qcow2"; bus?: "virtio" | "sata" | "nvme"; readOnly?: boolean })[];
    cdrom?: string;
    network?: { mode?: "user" | "bridge" | "none"; bridge?: string; model?: string; mac?: string };
    devices?: VmDeviceRef[];
    virtualFunctions?: VmVirtualFunctionRef[];
    mdevs?: VmMdevRef[];
    /** The name of a `kvmfr` entry, or a /dev/shm file. */
    sharedMemory?: string | { path: string; sizeMb: number };
    hideHypervisor?: boolean;
    hvVendorId?: string;
    uuid?: string;
    running?: boolean;
    autostart?: boolean;
    shutdownTimeoutSeconds?: number;
    extraArgs?: string[];
}

/** A host as host.yaml describes it (see schema/host.schema.json). */
export interface HostDefinition {
    /** The host's name in Pulumi (resource names are `<name>-<entry>`). */
    name?: string;
    /** SSH connection; absent: the machine running pulumi. */
    connection?: HostConnection;
    bindings?: Record<string, BindingEntry>;
    virtualFunctions?: Record<string, VirtualFunctionsEntry>;
    mdevs?: Record<string, MdevEntry>;
    kvmfr?: Record<string, KvmfrEntry>;
    vms?: Record<string, VmEntry>;
}

export const SECTIONS = ["bindings", "virtualFunctions", "mdevs", "kvmfr", "vms"] as const;
export type Section = (typeof SECTIONS)[number];

/** One thing wrong with a host definition, with where it is when it came from a file. */
export interface HostProblem {
    file?: string;
    /** 1-based. */
    line?: number;
    /** 1-based. */
    column?: number;
    /** The offending key as a dotted path: `vms.win11.devices[0]`, `bindings.gpu.drver`. */
    path: string;
    message: string;
}

export function formatProblem(p: HostProblem): string {
    const where = p.file ? `${p.file}${p.line ? `:${p.line}:${p.column}` : ""}: ` : "";
    return `${where}${p.path ? `${p.path}: ` : ""}${p.message}`;
}

/** A host definition that cannot be used; `problems` has every one found, in file order. */
export class HostDefinitionError extends Error {
    constructor(public readonly problems: HostProblem[]) {
        super(`${problems.length === 1 ? "1 problem" : `${problems.length} problems`} in the host definition:\n` + problems.map((p) => "  " + formatProblem(p)).join("\n"));
        this.name = "HostDefinitionError";
    }
}

// ------------------------------------------------------------------------------------------------ paths and positions

type Segment = string | number;

/** `["vms","win11","devices",0]` → `vms.win11.devices[0]`. */
export function dotted(segments: Segment[]): string {
    return segments.map((s, i) => (typeof s === "number" ? `[${s}]` : i === 0 ? s : `.${s}`)).join("");
}

function segmentsOf(instancePath: string): Segment[] {
    return instancePath
        .split("/")
        .filter(Boolean)
        .map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"))
        .map((p) => (/^\d+$/.test(p) ? Number(p) : p));
}

/** Where a path is: `key` points at the key of the last segment (for unknown and duplicate keys), else the value. */
type Locate = (segments: Segment[], at?: "key" | "value") => { line: number; column: number; source?: string } | undefined;

function yamlLocator(doc: Document, lc: LineCounter, text: string): Locate {
    return (segments, at = "value") => {
        let cur: unknown = doc.contents;
        let best: Node | undefined = doc.contents ?? undefined;
        let keyNode: Node | undefined;
        for (const seg of segments) {
            keyNode = undefined;
            if (isMap(cur)) {
                const pair = cur.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(seg));
                if (!pair) break;
                keyNode = pair.key as Node;
                best = keyNode;
                cur = pair.value;
                if (cur) best = cur as Node;
                else break;
            } else if (isSeq(cur) && typeof seg === "number" && cur.items[seg]) {
                cur = cur.items[seg];
                best = cur as Node;
            } else break;
        }
        const node = at === "key" && keyNode ? keyNode : best;
        const range = node?.range;
        if (!range) return undefined;
        const { line, col } = lc.linePos(range[0]);
        return { line, column: col, source: text.slice(range[0], range[1]) };
    };
}

// ------------------------------------------------------------------------------------------------ loading

export interface ParseOptions {
    /** Shown in messages and used for the default name and relative `privateKeyFile`s. */
    file?: string;
}

/**
 * Parse and check a host definition given as YAML text. Returns the definition with `name` defaulted (from the file
 * name, else "host") and `connection.privateKeyFile` made absolute.
 * @throws HostDefinitionError listing every problem with file, line, column and key.
 */
export function parseHostDefinition(text: string, opts: ParseOptions = {}): HostDefinition {
    const file = opts.file;
    const lc = new LineCounter();
    const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
    const syntax: HostProblem[] = doc.errors.map((e) => {
        const { line, col } = lc.linePos(e.pos[0]);
        const message = e.code === "DUPLICATE_KEY" ? "this key is already used above in the same map: every name must be unique" : e.message.split("\n")[0];
        return { file, line, column: col, path: duplicateKeyPath(doc, e.pos[0]) ?? "", message };
    });
    if (syntax.length) throw new HostDefinitionError(syntax);
    const data = doc.toJS({ maxAliasCount: 100 }) ?? {};
    const locate = yamlLocator(doc, lc, text);
    const problems = checkHostDefinition(data, locate).map((p) => ({ file, ...p }));
    if (problems.length) throw new HostDefinitionError(problems);
    return finish(data as HostDefinition, file);
}

/** The dotted path of a duplicate key at `offset`, for the message. */
function duplicateKeyPath(doc: Document, offset: number): string | undefined {
    const walk = (node: unknown, trail: Segment[]): string | undefined => {
        if (isMap(node)) {
            for (const p of node.items) {
                const k = isScalar(p.key) ? String(p.key.value) : "?";
                if ((p.key as Node | null)?.range?.[0] === offset) return dotted([...trail, k]);
                const r = walk(p.value, [...trail, k]);
                if (r) return r;
            }
        } else if (isSeq(node)) {
            for (let i = 0; i < node.items.length; i++) {
                const r = walk(node.items[i], [...trail, i]);
                if (r) return r;
            }
        }
        return undefined;
    };
    return walk(doc.contents, []);
}

/**
 * Read and check a host file (host.yaml).
 * @throws HostDefinitionError listing every problem with file, line, column and key; an Error when the file cannot be read.
 */
export function loadHostDefinition(file: string): HostDefinition {
    let text: string;
    try {
        text = fs.readFileSync(file, "utf8");
    } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        throw new Error(`cannot read the host file ${file}${code === "ENOENT" ? ": it does not exist (write one with `pulumi-vfio init -o " + file + "`)" : code ? ` (${code})` : ""}`);
    }
    return parseHostDefinition(text, { file });
}

function finish(def: HostDefinition, file?: string): HostDefinition {
    const out: HostDefinition = { ...def };
    for (const s of SECTIONS) if (out[s] === null) delete out[s];
    if (out.name === undefined) out.name = file ? defaultHostName(file) : "host";
    if (out.connection?.privateKeyFile) out.connection = { ...out.connection, privateKeyFile: resolveKeyFile(out.connection.privateKeyFile, file ? path.dirname(path.resolve(file)) : process.cwd()) };
    return out;
}

/** `hosts/gpu-box.yaml` → `gpu-box`; a name the schema would refuse falls back to `host`. */
export function defaultHostName(file: string): string {
    const base = path.basename(file).replace(/\.ya?ml$/i, "");
    return /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/.test(base) ? base : "host";
}

export function resolveKeyFile(p: string, baseDir: string): string {
    if (p === "~" || p.startsWith("~/")) return path.join(os.homedir(), p.slice(1));
    return path.resolve(baseDir, p);
}

// ------------------------------------------------------------------------------------------------ checking

/**
 * Every problem of a definition (schema, then references and claims), each with its position when `locate` knows
 * the source. For definitions written in TypeScript VfioHost calls this without positions.
 */
export function checkHostDefinition(input: unknown, locate: Locate = () => undefined): HostProblem[] {
    if (input === null || typeof input !== "object" || Array.isArray(input)) {
        return [{ path: "", line: 1, column: 1, message: "a host definition is a map with the keys name, connection, bindings, virtualFunctions, mdevs, kvmfr, vms" }];
    }
    // Empty sections (`vms:` with every entry commented out) are empty, not null.
    const data: Record<string, unknown> = { ...(input as Record<string, unknown>) };
    for (const s of SECTIONS) if (data[s] === null) delete data[s];
    const schemaProblems = validateSchema(data, locate);
    // References are only meaningful in a definition of the right shape.
    const problems = schemaProblems.length ? schemaProblems : semanticProblems(data as HostDefinition, locate);
    return problems.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
}

function validateSchema(data: Record<string, unknown>, locate: Locate): HostProblem[] {
    const v = schemas().getSchema(HOST_SCHEMA);
    if (!v) throw new Error(`no schema ${HOST_SCHEMA}`);
    // ajv applies the per-resource defaults while validating: validate a copy, keep the file as written.
    v(JSON.parse(JSON.stringify(data)));
    const errors = relevantErrors(v.errors ?? []);
    const out: HostProblem[] = [];
    const seen = new Set<string>();
    for (const e of errors) {
        const p = schemaProblem(e, data, locate);
        const key = `${p.path}\n${p.message}`;
        if (!seen.has(key)) {
            seen.add(key);
            out.push(p);
        }
    }
    return out;
}

/**
 * A value that may be a name or an object (oneOf) gets a `type` error from each branch it is not. When some other
 * error explains the value (it is an object with a typo'd key), the type errors are noise; when none does, they
 * merge into one "must be string or object".
 */
function relevantErrors(errors: ErrorObject[]): ErrorObject[] {
    const plain = errors.filter((e) => !["oneOf", "anyOf", "if", "propertyNames"].includes(e.keyword));
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
    return out;
}

const describeJs = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "a list" : typeof v === "object" ? "a map" : typeof v === "string" ? JSON.stringify(v) : String(v));

const position = (p: ReturnType<Locate>) => (p ? { line: p.line, column: p.column } : {});

function valueAt(data: unknown, segs: Segment[]): unknown {
    let cur: any = data;
    for (const s of segs) {
        if (cur === null || cur === undefined) return undefined;
        cur = cur[s];
    }
    return cur;
}

function schemaProblem(e: ErrorObject, data: unknown, locate: Locate): HostProblem {
    const segs = segmentsOf(e.instancePath);
    const value = valueAt(data, segs);
    const at = (s: Segment[], where: "key" | "value", message: string): HostProblem => ({ path: dotted(s), ...position(locate(s, where)), message });
    if (e.propertyName !== undefined) {
        return at([...segs, e.propertyName], "key", `${JSON.stringify(e.propertyName)} is not a valid name: use letters, digits, '_' and '-', starting with a letter or digit (at most 63 characters)`);
    }
    switch (e.keyword) {
        case "additionalProperties": {
            const key = String(e.params.additionalProperty);
            const keySegs = [...segs, key];
            const allowed = allowedKeys(segs);
            const guess = closest(key, allowed);
            if (segs[segs.length - 1] === "connection" && ["password", "privateKey", "privateKeyPassword"].includes(key)) {
                return at(keySegs, "key", `no secrets in a host file (it is meant for git): use \`privateKeyFile\`, an ssh-agent (SSH_AUTH_SOCK), or pass the secret to VfioHost's \`connection\` option from Pulumi config (\`pulumi config set --secret\`)`);
            }
            return at(keySegs, "key", `unknown key ${JSON.stringify(key)}${guess ? `; did you mean ${JSON.stringify(guess)}?` : ""}${allowed.length ? ` (allowed here: ${allowed.join(", ")})` : ""}`);
        }
        case "false schema":
            return at(segs, "key", segs[segs.length - 1] === "connection" ? "not allowed here: the top-level `connection` applies to every resource of the host" : "not allowed here");
        case "required": {
            const missing = String(e.params.missingProperty);
            return at(segs, "key", `${JSON.stringify(missing)} is required${segs.length ? ` in ${dotted(segs)}` : " at the top level"}`);
        }
        case "type": {
            const want = String(e.params.type);
            const source = locate(segs, "value")?.source ?? String(value);
            const hint = want === "string" && typeof value === "number" ? ` (YAML read ${source} as a number: quote it, "${source}")` : "";
            const words: Record<string, string> = { object: "a map", array: "a list", integer: "an integer", number: "a number", string: "a string", boolean: "true or false", null: "empty" };
            const wanted = want.split(" or ").map((t) => words[t] ?? t).join(" or ");
            return at(segs, "value", `must be ${wanted}, not ${describeJs(value)}${hint}`);
        }
        case "pattern": {
            const last = segs[segs.length - 1];
            const isName = last === "from" || last === "binding" || last === "mdev" || (typeof last === "number" && ["devices", "mdevs"].includes(String(segs[segs.length - 2]))) || last === "sharedMemory" || last === "name";
            const why = isName ? "letters, digits, '_' and '-', starting with a letter or digit" : `the pattern ${e.params.pattern}`;
            return at(segs, "value", `${describeJs(value)} does not match ${why}`);
        }
        case "enum":
            return at(segs, "value", `must be one of ${(e.params.allowedValues as unknown[]).map((x) => JSON.stringify(x)).join(", ")}, not ${describeJs(value)}`);
        case "minimum":
        case "maximum":
        case "exclusiveMinimum":
        case "exclusiveMaximum":
            return at(segs, "value", `must be ${e.params.comparison} ${e.params.limit}, not ${describeJs(value)}`);
        case "minLength":
            return at(segs, "value", "must not be empty");
        default:
            return at(segs, "value", e.message ?? e.keyword);
    }
}

// --- which keys a map at a path may have, from the schemas themselves (for "did you mean")

type Schema = Record<string, any> | boolean;

function resolveRef(ref: string, base: string): { schema: Schema; base: string } | undefined {
    const [file, pointer = ""] = ref.split("#");
    const id = file ? new URL(file, base).href : base;
    const root = schemas().getSchema(id)?.schema as Schema | undefined;
    if (root === undefined) return undefined;
    let cur: any = root;
    for (const p of pointer.split("/").filter(Boolean)) cur = cur?.[p.replace(/~1/g, "/").replace(/~0/g, "~")];
    return cur === undefined ? undefined : { schema: cur, base: id };
}

/** Every schema that applies at a path (following $ref and oneOf branches). */
function schemasAt(segs: Segment[]): { schema: Schema; base: string }[] {
    const expand = (s: { schema: Schema; base: string }): { schema: Schema; base: string }[] => {
        if (typeof s.schema !== "object") return [s];
        const out = [s];
        if (typeof s.schema.$ref === "string") {
            const r = resolveRef(s.schema.$ref, s.base);
            if (r) out.push(...expand(r));
        }
        for (const k of ["oneOf", "anyOf", "allOf"]) for (const b of s.schema[k] ?? []) out.push(...expand({ schema: b, base: s.base }));
        return out;
    };
    const rootId = "https://pulumi-vfio.dev/schema/host.schema.json";
    let cur = expand({ schema: schemas().getSchema(rootId)!.schema as Schema, base: rootId });
    for (const seg of segs) {
        const next: { schema: Schema; base: string }[] = [];
        for (const c of cur) {
            if (typeof c.schema !== "object") continue;
            const sub = typeof seg === "number" ? c.schema.items : (c.schema.properties?.[seg] ?? c.schema.additionalProperties);
            if (sub !== undefined && typeof sub === "object") next.push(...expand({ schema: sub, base: c.base }));
        }
        cur = next;
    }
    return cur;
}

export function allowedKeys(segs: Segment[]): string[] {
    const keys = new Set<string>();
    for (const s of schemasAt(segs)) {
        if (typeof s.schema !== "object" || !s.schema.properties) continue;
        for (const [k, v] of Object.entries(s.schema.properties)) if (v !== false) keys.add(k);
    }
    for (const s of schemasAt(segs)) if (typeof s.schema === "object") for (const [k, v] of Object.entries(s.schema.properties ?? {})) if (v === false) keys.delete(k);
    keys.delete("$schema");
    return [...keys];
}

function editDistance(a: string, b: string): number {
    const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
    for (let j = 1; j <= b.length; j++) d[0][j] = j;
    for (let i = 1; i <= a.length; i++)
        for (let j = 1; j <= b.length; j++) d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    return d[a.length][b.length];
}

/** The candidate a typo most likely meant, if any is close (case differences count as one edit). */
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
    return best !== undefined && bestD <= Math.max(1, Math.floor(word.length / 3)) ? best : undefined;
}

// --- references and claims

function normalizedAddress(a: unknown): string | undefined {
    try {
        return typeof a === "string" ? parseAddress(a) : undefined;
    } catch {
        return undefined;
    }
}

/** The QEMU name of a VM entry. */
export function vmName(key: string, vm: VmEntry): string {
    return vm.name ?? key;
}

/** The name VfioHost gives the binding it makes for a VF a VM uses (entry names cannot contain '.', so no clash). */
export function vfBindingKey(from: string, index: number): string {
    return `${from}.vf${index}`;
}

function semanticProblems(def: HostDefinition, locate: Locate): HostProblem[] {
    const out: HostProblem[] = [];
    const problem = (segs: Segment[], message: string, where: "key" | "value" = "value") => out.push({ path: dotted(segs), ...position(locate(segs, where)), message });
    const where = (segs: Segment[], where: "key" | "value" = "value") => {
        const p = locate(segs, where);
        return p ? `${dotted(segs)} (line ${p.line})` : dotted(segs);
    };
    const entries = <S extends Section>(s: S) => Object.entries((def[s] ?? {}) as Record<string, any>);

    // Names: one name, one thing (resource names are <host>-<entry>, and a reader should not have to ask which).
    const firstUse = new Map<string, Segment[]>();
    for (const s of SECTIONS) {
        for (const [key] of entries(s)) {
            const prev = firstUse.get(key);
            if (prev) problem([s, key], `the name ${JSON.stringify(key)} is already used by ${where(prev, "key")}; give every entry its own name`, "key");
            else firstUse.set(key, [s, key]);
        }
    }
    const qemuNames = new Map<string, Segment[]>();
    for (const [key, vm] of entries("vms")) {
        const n = vmName(key, vm);
        const segs: Segment[] = vm.name !== undefined ? ["vms", key, "name"] : ["vms", key];
        const prev = qemuNames.get(n);
        if (prev) problem(segs, `VM name ${JSON.stringify(n)} is also the name of ${where(prev, "key")}: QEMU's -name and /run/pulumi-vfio/vm/<name> must be unique`, vm.name !== undefined ? "value" : "key");
        else qemuNames.set(n, segs);
    }

    // Devices that two entries would fight over.
    const boundAt = new Map<string, Segment[]>();
    for (const [key, b] of entries("bindings")) {
        const addr = normalizedAddress(b.device);
        const id = addr ?? (typeof b.device === "object" ? JSON.stringify(b.device) : undefined);
        if (!id) continue;
        const prev = boundAt.get(id);
        if (prev) problem(["bindings", key, "device"], `${addr ?? "this selector"} is already bound by ${where(prev, "key")}; one binding per device`);
        else boundAt.set(id, ["bindings", key]);
    }
    const pfAt = new Map<string, Segment[]>();
    for (const [key, v] of entries("virtualFunctions")) {
        const pf = normalizedAddress(v.physicalFunction);
        if (!pf) continue;
        const prev = pfAt.get(pf);
        if (prev) problem(["virtualFunctions", key, "physicalFunction"], `${pf} already has its VFs in ${where(prev, "key")}: sriov_numvfs is one number per physical function`);
        else pfAt.set(pf, ["virtualFunctions", key]);
        const bound = boundAt.get(pf);
        const binding = bound ? (def.bindings ?? {})[String(bound[1])] : undefined;
        if (binding && (binding.driver ?? "vfio-pci") === "vfio-pci") {
            problem(["bindings", String(bound![1]), "device"], `${pf} is the physical function of virtualFunctions.${key}: bound to vfio-pci it can no longer create VFs (sriov_numvfs fails with ENOENT); pass its VFs instead`);
        }
    }
    const uuidAt = new Map<string, Segment[]>();
    for (const [key, m] of entries("mdevs")) {
        if (typeof m.uuid !== "string") continue;
        const u = m.uuid.toLowerCase();
        const prev = uuidAt.get(u);
        if (prev) problem(["mdevs", key, "uuid"], `UUID ${u} is already the UUID of ${where(prev, "key")}; mdev UUIDs are unique on a host (the kernel answers EEXIST)`);
        else uuidAt.set(u, ["mdevs", key]);
    }
    const indexAt = new Map<number, Segment[]>();
    for (const [key, k] of entries("kvmfr")) {
        const prev = indexAt.get(k.index);
        if (prev) problem(["kvmfr", key, "index"], `/dev/kvmfr${k.index} is already ${where(prev, "key")}; each kvmfr device needs its own index`);
        else indexAt.set(k.index, ["kvmfr", key]);
    }

    // What each VM takes, by name; a device goes to one VM.
    const claims = new Map<string, Segment[]>();
    const claim = (id: string, what: string, segs: Segment[], vm: string) => {
        const prev = claims.get(id);
        if (!prev) {
            claims.set(id, segs);
            return;
        }
        if (prev[1] === vm) problem(segs, `${what} is listed twice in this VM`);
        else problem(segs, `${what} is already claimed by VM ${JSON.stringify(prev[1])} at ${where(prev)}; a device can be passed to one VM only`);
    };
    const missing = (segs: Segment[], kind: string, name: string, section: Section) => {
        const names = entries(section).map(([k]) => k);
        const guess = closest(name, names);
        problem(segs, `no ${kind} named ${JSON.stringify(name)} under \`${section}\`${guess ? `; did you mean ${JSON.stringify(guess)}?` : names.length ? ` (there: ${names.join(", ")})` : ` (\`${section}\` is empty)`}`);
    };
    for (const [vmKey, vm] of entries("vms")) {
        (vm.devices ?? []).forEach((d: VmDeviceRef, i: number) => {
            const name = typeof d === "string" ? d : d.binding;
            const segs: Segment[] = typeof d === "string" ? ["vms", vmKey, "devices", i] : ["vms", vmKey, "devices", i, "binding"];
            if (!def.bindings?.[name]) return missing(segs, "binding", name, "bindings");
            claim(`binding:${name}`, `binding ${JSON.stringify(name)}`, segs, vmKey);
        });
        (vm.virtualFunctions ?? []).forEach((v: VmVirtualFunctionRef, i: number) => {
            const segs: Segment[] = ["vms", vmKey, "virtualFunctions", i];
            const vfs = def.virtualFunctions?.[v.from];
            if (!vfs) return missing([...segs, "from"], "virtualFunctions entry", v.from, "virtualFunctions");
            if (v.index >= vfs.count) {
                return problem([...segs, "index"], `virtualFunctions.${v.from} makes ${vfs.count} VF${vfs.count === 1 ? "" : "s"}: index ${v.index} does not exist${vfs.count ? ` (0–${vfs.count - 1})` : ""}`);
            }
            claim(`vf:${v.from}:${v.index}`, `VF ${v.index} of ${JSON.stringify(v.from)}`, segs, vmKey);
        });
        (vm.mdevs ?? []).forEach((m: VmMdevRef, i: number) => {
            const name = typeof m === "string" ? m : m.mdev;
            const segs: Segment[] = typeof m === "string" ? ["vms", vmKey, "mdevs", i] : ["vms", vmKey, "mdevs", i, "mdev"];
            if (!def.mdevs?.[name]) return missing(segs, "mdev", name, "mdevs");
            claim(`mdev:${name}`, `mdev ${JSON.stringify(name)}`, segs, vmKey);
        });
        const sm = vm.sharedMemory;
        if (typeof sm === "string") {
            const segs: Segment[] = ["vms", vmKey, "sharedMemory"];
            const k = def.kvmfr?.[sm];
            if (!k) missing(segs, "kvmfr device", sm, "kvmfr");
            else claim(`shm:/dev/kvmfr${k.index}`, `kvmfr device ${JSON.stringify(sm)} (/dev/kvmfr${k.index})`, segs, vmKey);
        } else if (sm && typeof sm === "object") {
            const segs: Segment[] = ["vms", vmKey, "sharedMemory", "path"];
            const idx = /^\/dev\/kvmfr(\d)$/.exec(sm.path);
            const named = idx ? entries("kvmfr").find(([, k]) => k.index === Number(idx[1])) : undefined;
            claim(`shm:${sm.path}`, named ? `${sm.path} (kvmfr.${named[0]})` : sm.path, segs, vmKey);
        }
    }
    return out;
}

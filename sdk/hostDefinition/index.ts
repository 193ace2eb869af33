/**
 * host.yaml: one GPU-passthrough host described in a file kept in git. {@link loadHostDefinition} parses it with
 * `yaml` (keeping every node's position), validates it against schema/host.schema.json, then checks what a schema
 * cannot (./semantic): references by name that point nowhere, two VMs claiming one device, two kvmfr devices with
 * one index, names used twice, and every check of a resource's inputs that needs no host. Every problem names file,
 * line, column and the offending key, so `pulumi preview` stops before anything on the host changes.
 *
 * No Pulumi here (the CLI's `init` validates what it writes with this too).
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { LineCounter, isMap, parseDocument } from "yaml";
import type { ErrorObject } from "ajv/dist/2020";
import { schemas } from "../../provider/check";
import { Segment, dotted, schemaProblems } from "../../provider/schemaErrors";
import { Locate, position, syntaxProblems, yamlLocator } from "./positions";
import { entryProblems, semanticProblems } from "./semantic";
import { HostDefinition, HostDefinitionError, HostProblem, SECTIONS } from "./types";

export * from "./types";
export { vfBindingKey, vmName } from "./semantic";

export const HOST_SCHEMA = "host.schema.json";

export interface ParseOptions {
    /** Shown in messages and used for the default name and relative `privateKeyFile`s. */
    file?: string;
}

/**
 * What a file with nothing in it is told. An empty file is far more often a truncated or emptied one (a failed
 * write, a bad merge) than a host meant to have nothing, and loading it as such would plan to delete every binding
 * and VM: a host with nothing on it says so with its sections written empty.
 */
const EXPLICITLY_EMPTY = "a host meant to have nothing says so with its sections written empty, e.g. `name: <host>` then `bindings: {}` and `vms: {}` (what `pulumi-vfio init` writes does this)";

/**
 * Parse and check a host definition given as YAML text. Returns the definition with `name` defaulted (from the file
 * name, else "host") and `connection.privateKeyFile` made absolute.
 * @throws HostDefinitionError listing every problem with file, line, column and key; also for an empty,
 *   comment-only or `null` document and for a map with none of the sections (bindings, virtualFunctions, mdevs,
 *   kvmfr, vms), which would otherwise plan to remove everything on the host.
 */
export function parseHostDefinition(text: string, opts: ParseOptions = {}): HostDefinition {
    const file = opts.file;
    const lc = new LineCounter();
    const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
    const syntax = syntaxProblems(doc, lc, file);
    if (syntax.length) throw new HostDefinitionError(syntax);
    const data = doc.toJS({ maxAliasCount: 100 });
    if (data === null || data === undefined) {
        const what = doc.contents === null ? (text.trim() ? "has only comments" : "is empty") : "is null";
        throw new HostDefinitionError([{ file, line: 1, column: 1, path: "", message: `the host file ${what}: expected a map with the sections bindings, virtualFunctions, mdevs, kvmfr, vms (and name, connection); ${EXPLICITLY_EMPTY}` }]);
    }
    const locate = yamlLocator(doc, lc, text);
    const problems = checkHostDefinition(data, locate).map((p) => ({ file, ...p }));
    if (problems.length) throw new HostDefinitionError(problems);
    // After the schema: a misspelt section (`vm:`) is better told as such.
    if (isMap(doc.contents) && !SECTIONS.some((s) => s in data) && !("bootConfig" in data)) {
        const { line, col } = lc.linePos(doc.contents.range?.[0] ?? 0);
        throw new HostDefinitionError([{ file, line, column: col, path: "", message: `none of the sections bootConfig, bindings, virtualFunctions, mdevs, kvmfr, vms is in the host file, as in a truncated one; ${EXPLICITLY_EMPTY}` }]);
    }
    return finish(data as HostDefinition, file);
}

/**
 * Read and check a host file (host.yaml). Messages name the file relative to the working directory when it is
 * below it (Pulumi runs a program in its project directory: `host.yaml:4:34`, as the README quotes), else as given.
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
    try {
        return parseHostDefinition(text, { file });
    } catch (e) {
        const below = path.relative(process.cwd(), file);
        if (!(e instanceof HostDefinitionError) || !path.isAbsolute(file) || below.startsWith("..") || path.isAbsolute(below)) throw e;
        throw new HostDefinitionError(e.problems.map((p) => ({ ...p, file: below })));
    }
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

/**
 * Every problem of a definition (schema; then references, claims and each entry's own input checks), each with its
 * position when `locate` knows the source. For definitions written in TypeScript VfioHost calls this without
 * positions.
 */
export function checkHostDefinition(input: unknown, locate: Locate = () => undefined): HostProblem[] {
    if (input === null || typeof input !== "object" || Array.isArray(input)) {
        return [{ path: "", line: 1, column: 1, message: "a host definition is a map with the keys name, connection, bootConfig, bindings, virtualFunctions, mdevs, kvmfr, vms" }];
    }
    // Empty sections (`vms:` with every entry commented out) are empty, not null.
    const data: Record<string, unknown> = { ...(input as Record<string, unknown>) };
    for (const s of SECTIONS) if (data[s] === null) delete data[s];
    const schemaFound = validateSchema(data, locate);
    // References are only meaningful in a definition of the right shape.
    const problems = schemaFound.length ? schemaFound : [...semanticProblems(data as HostDefinition, locate), ...entryProblems(data as HostDefinition, locate)];
    return problems.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
}

/** What host.yaml says where the resource schemas alone would say less. */
function hostMessage(e: ErrorObject, segs: Segment[]): string | undefined {
    const last = segs[segs.length - 1];
    const parent = segs[segs.length - 2];
    if (e.keyword === "additionalProperties" && parent === "connection" && ["password", "privateKey", "privateKeyPassword"].includes(String(last))) {
        return "no secrets in a host file (it is meant for git): use `privateKeyFile`, an ssh-agent (SSH_AUTH_SOCK), or pass the secret to VfioHost's `connection` option from Pulumi config (`pulumi config set --secret`)";
    }
    if (e.keyword === "false schema" && last === "connection") return "not allowed here: the top-level `connection` applies to every resource of the host";
    return undefined;
}

function validateSchema(data: Record<string, unknown>, locate: Locate): HostProblem[] {
    const v = schemas().getSchema(HOST_SCHEMA);
    if (!v) throw new Error(`no schema ${HOST_SCHEMA}`);
    // ajv applies the per-resource defaults while validating: validate a copy, keep the file as written.
    v(JSON.parse(JSON.stringify(data)));
    return schemaProblems(v.errors ?? [], data, { ajv: schemas(), schema: HOST_SCHEMA, source: (s) => locate(s, "value")?.source, override: hostMessage }).map((p) => ({
        path: dotted(p.segments),
        ...position(locate(p.segments, p.at)),
        message: p.message,
    }));
}

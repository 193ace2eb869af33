#!/usr/bin/env node
/*
 * Generates, from the resource JSON Schemas in schema/ (the one source of every input's shape, docs and default):
 *   - provider/generated/inputs.ts  plain input types, with JSDoc from each `description` and `default`;
 *   - sdk/generated/args.ts         the SDK's Args (every property a pulumi.Input), same docs;
 *   - README.md                     the input table of each resource, between <!-- generated:<schema>:start/end -->.
 *
 *   node scripts/gen-schema.js            write them
 *   node scripts/gen-schema.js --check    write nothing; exit 1 with a diff when any of them is stale (CI)
 *   --root DIR                            work on another checkout (the tests use a copy)
 *
 * Plain node and no dependencies, so it runs before anything is compiled. Every schema/*.schema.json except the
 * shared ones is a resource; the table below only names nested object types (a schema location → a type name), so a
 * new resource schema is picked up without touching this file (its nested objects are then inline types).
 */
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawnSync } = require("child_process");

/** Schemas that are not a resource's inputs. */
const SHARED = new Set(["common.schema.json", "host.schema.json"]);

/** Nested object types that get a name (`<name>Input` in the provider, `<name>Args` in the SDK), by schema location. */
const NAMES = {
    "boot-config.schema.json": { "/properties/modules/items": "ModuleSetting" },
    "iommu-binding.schema.json": { "/properties/device/oneOf/1": "DeviceSelector" },
    "mdev-instance.schema.json": { "/properties/vram": "VramBounds", "/properties/attrs/items": "MdevAttr" },
    "passthrough-vm.schema.json": {
        "/properties/cpu": "Cpu",
        "/properties/firmware": "Firmware",
        "/properties/network": "Network",
        "/properties/sharedMemory": "SharedMemory",
        "/$defs/disk/oneOf/1": "Disk",
        "/$defs/device/oneOf/1": "PassthroughDevice",
        "/$defs/mdev/oneOf/1": "Mdev",
    },
};

/** `$ref`s rendered as a hand-written type instead of being expanded (the SSH connection has more doc than shape). */
const REF_TYPES = {
    "common.schema.json#/$defs/connection": { input: "Connection", args: "ConnectionArgs" },
};

const pascal = (file) => file.replace(/\.schema\.json$/, "").replace(/(^|-)([a-z])/g, (_, __, c) => c.toUpperCase());

function parseArgs(argv) {
    const o = { check: false, root: path.resolve(__dirname, "..") };
    for (let i = 0; i < argv.length; i++) {
        if (argv[i] === "--check") o.check = true;
        else if (argv[i] === "--root") o.root = path.resolve(argv[++i]);
        else throw new Error(`gen-schema: unknown argument ${argv[i]} (use --check, --root DIR)`);
    }
    return o;
}

function loadSchemas(root) {
    const dir = path.join(root, "schema");
    const all = {};
    for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".schema.json")).sort()) {
        all[f] = JSON.parse(fs.readFileSync(path.join(dir, f), "utf8"));
    }
    return all;
}

function pointerGet(doc, pointer, where) {
    let node = doc;
    for (const raw of pointer.split("/").slice(1)) {
        const key = raw.replace(/~1/g, "/").replace(/~0/g, "~");
        if (node === undefined || node === null || !(key in node)) throw new Error(`gen-schema: ${where} does not resolve`);
        node = node[key];
    }
    return node;
}

/** Type renderer for one flavour: "input" (plain provider types) or "args" (SDK, pulumi.Input everywhere). */
class Renderer {
    constructor(schemas, flavour) {
        this.schemas = schemas;
        this.flavour = flavour;
        this.named = new Map(); // type name -> { node, file, pointer, doc }
        this.order = [];
    }
    suffix() {
        return this.flavour === "input" ? "Input" : "Args";
    }
    wrap(t) {
        return this.flavour === "args" ? `pulumi.Input<${t}>` : t;
    }
    /** The type of a schema node at file#pointer (without the outer pulumi.Input of a property). */
    type(node, file, pointer, ctxDoc) {
        if (node.$ref) {
            const [refFile, frag = ""] = node.$ref.split("#");
            const targetFile = refFile || file;
            const key = `${targetFile}#${frag}`;
            if (REF_TYPES[key]) return REF_TYPES[key][this.flavour];
            const target = pointerGet(this.schemas[targetFile], frag, `${file}#${pointer}: $ref ${node.$ref}`);
            return this.type(target, targetFile, frag, node.description ?? ctxDoc);
        }
        const name = (NAMES[file] ?? {})[pointer];
        if (name) {
            const full = name + this.suffix();
            if (!this.named.has(full)) {
                this.named.set(full, null);
                this.named.set(full, { ...this.object(node, file, pointer), doc: node.description ?? ctxDoc });
                this.order.push(full);
            }
            return full;
        }
        if (node.const !== undefined) return JSON.stringify(node.const);
        if (node.enum) return node.enum.map((v) => JSON.stringify(v)).join(" | ");
        const alts = node.oneOf ?? node.anyOf;
        if (alts) return alts.map((a, k) => this.type(a, file, `${pointer}/${node.oneOf ? "oneOf" : "anyOf"}/${k}`, node.description ?? ctxDoc)).join(" | ");
        switch (node.type) {
            case "string":
                return "string";
            case "integer":
            case "number":
                return "number";
            case "boolean":
                return "boolean";
            case "array": {
                const item = this.type(node.items ?? {}, file, `${pointer}/items`);
                const el = this.flavour === "args" ? `pulumi.Input<${item}>` : /[| ]/.test(item) ? `(${item})` : item;
                return `${el}[]`;
            }
            case "object": {
                // A map (module parameters): names are free, values share one schema.
                if (!node.properties && node.additionalProperties && typeof node.additionalProperties === "object") {
                    return `Record<string, ${this.wrap(this.type(node.additionalProperties, file, `${pointer}/additionalProperties`))}>`;
                }
                const o = this.object(node, file, pointer);
                return `{ ${o.fields.map((f) => `${f.key}${f.optional ? "?" : ""}: ${f.type}`).join("; ")} }`;
            }
            default:
                return "unknown";
        }
    }
    object(node, file, pointer) {
        const req = new Set(node.required ?? []);
        const fields = Object.entries(node.properties ?? {}).map(([key, p]) => ({
            key,
            optional: !req.has(key),
            type: this.wrap(this.type(p, file, `${pointer}/properties/${key}`)),
            doc: docOf(p, this.schemas, file),
        }));
        return { fields };
    }
}

/** A default as the docs show it: a string bare (`vfio-pci`), anything else as JSON (`true`, `[]`). */
const showDefault = (v) => (typeof v === "string" ? v : JSON.stringify(v));

/** A property's doc: its description (or its $ref target's) and its default. */
function docOf(p, schemas, file) {
    let d = p.description;
    if (d === undefined && p.$ref) {
        const [refFile, frag = ""] = p.$ref.split("#");
        d = pointerGet(schemas[refFile || file], frag, p.$ref).description;
    }
    const parts = [];
    if (d) parts.push(d);
    if (p.default !== undefined) parts.push(`Default: \`${showDefault(p.default)}\`.`);
    return parts.join(" ");
}

function jsdoc(text, indent) {
    if (!text) return "";
    const width = 120 - indent.length - 3;
    const lines = [];
    let line = "";
    for (const w of text.replace(/\*\//g, "*\\/").split(/\s+/)) {
        if (line && line.length + 1 + w.length > width) {
            lines.push(line);
            line = w;
        } else line = line ? `${line} ${w}` : w;
    }
    if (line) lines.push(line);
    if (lines.length === 1 && lines[0].length + indent.length + 7 <= 120) return `${indent}/** ${lines[0]} */\n`;
    return `${indent}/**\n${lines.map((l) => `${indent} * ${l}`).join("\n")}\n${indent} */\n`;
}

function renderInterface(name, o, doc) {
    let s = jsdoc(doc, "");
    s += `export interface ${name} {\n`;
    for (const f of o.fields) s += jsdoc(f.doc, "    ") + `    ${f.key}${f.optional ? "?" : ""}: ${f.type};\n`;
    return s + "}\n";
}

function header(what, files) {
    return [
        "// Generated by scripts/gen-schema.js from schema/; do not edit. Run `npm run gen` after changing a schema",
        "// (`npm run gen:check`, run in CI, fails on a stale copy).",
        `// ${what}`,
        "// Sources:",
        ...files.map((f) => `//   schema/${f}`),
        "",
    ].join("\n");
}

function resourceFiles(schemas) {
    return Object.keys(schemas).filter((f) => !SHARED.has(f));
}

function renderTs(schemas, flavour) {
    const files = resourceFiles(schemas);
    const r = new Renderer(schemas, flavour);
    const blocks = [];
    for (const f of files) {
        const s = schemas[f];
        const top = `${pascal(f)}${flavour === "input" ? "SchemaInputs" : "Args"}`;
        const before = r.order.length;
        const o = r.object(s, f, "");
        const nested = r.order.slice(before).map((n) => renderInterface(n, r.named.get(n), r.named.get(n).doc));
        blocks.push(`// ${"-".repeat(96)} ${s.title ?? f}\n\n${[...nested, renderInterface(top, o, s.description)].join("\n")}`);
    }
    const imports =
        flavour === "input"
            ? `import type { Connection } from "../host/ssh";\n`
            : `import type * as pulumi from "@pulumi/pulumi";\nimport type { ConnectionArgs } from "../types";\n`;
    const what = flavour === "input" ? "Plain input types of the provider's resources." : "The SDK resources' Args: every property a pulumi.Input.";
    return `${header(what, [...files, "common.schema.json"])}\n${imports}\n${blocks.join("\n")}`;
}

// ------------------------------------------------------------------------------------------------ README tables

const md = (s) => s.replace(/\|/g, "\\|").replace(/\s+/g, " ").trim();

/** The README's short type notation: `string`, `{a, b?}`, `(string \| {path, bus?})[]`, `` `b7` \| `current` ``. */
function readmeType(node, schemas, file) {
    if (node.$ref) {
        const [refFile, frag = ""] = node.$ref.split("#");
        const key = `${refFile || file}#${frag}`;
        if (REF_TYPES[key]) return REF_TYPES[key].args;
        return readmeType(pointerGet(schemas[refFile || file], frag, node.$ref), schemas, refFile || file);
    }
    if (node.enum) return node.enum.map((v) => `\`${v}\``).join(" | ");
    const alts = node.oneOf ?? node.anyOf;
    if (alts) return alts.map((a) => readmeType(a, schemas, file)).join(" | ");
    if (node.type === "array") {
        const t = readmeType(node.items ?? {}, schemas, file);
        return / \| /.test(t) ? `(${t})[]` : `${t}[]`;
    }
    if (node.type === "object") {
        if (!node.properties && node.additionalProperties && typeof node.additionalProperties === "object") return `{[name]: ${readmeType(node.additionalProperties, schemas, file)}}`;
        const req = new Set(node.required ?? []);
        return `\`{${Object.keys(node.properties ?? {}).map((k) => `${k}${req.has(k) ? "" : "?"}`).join(", ")}}\``;
    }
    return node.type ?? "any";
}

function readmeTable(schemas, f) {
    const s = schemas[f];
    const req = new Set(s.required ?? []);
    const rows = ["| input | type | default | meaning |", "|---|---|---|---|"];
    for (const [k, p] of Object.entries(s.properties ?? {})) {
        const def = req.has(k) ? "required" : p.default !== undefined ? `\`${showDefault(p.default)}\`` : "—";
        let d = p.description;
        if (d === undefined && p.$ref) {
            const [refFile, frag = ""] = p.$ref.split("#");
            d = pointerGet(schemas[refFile || f], frag, p.$ref).description;
        }
        rows.push(`| \`${k}\` | ${md(readmeType(p, schemas, f))} | ${def} | ${md(d ?? "")} |`);
    }
    return rows.join("\n");
}

function renderReadme(schemas, text) {
    let out = text;
    for (const f of resourceFiles(schemas)) {
        const id = f.replace(/\.schema\.json$/, "");
        const start = `<!-- generated:${id}:start (scripts/gen-schema.js from schema/${f}; do not edit) -->`;
        const end = `<!-- generated:${id}:end -->`;
        const re = new RegExp(`<!-- generated:${id}:start[^>]*-->[\\s\\S]*?<!-- generated:${id}:end -->`);
        // A resource whose README section has no markers yet gets no table: the prose around it is hand-written.
        if (re.test(out)) out = out.replace(re, () => `${start}\n${readmeTable(schemas, f)}\n${end}`);
    }
    return out;
}

// ------------------------------------------------------------------------------------------------ main

function outputs(root) {
    const schemas = loadSchemas(root);
    const readme = path.join(root, "README.md");
    return [
        [path.join(root, "provider/generated/inputs.ts"), renderTs(schemas, "input")],
        [path.join(root, "sdk/generated/args.ts"), renderTs(schemas, "args")],
        [readme, renderReadme(schemas, fs.readFileSync(readme, "utf8"))],
    ];
}

function main() {
    const opts = parseArgs(process.argv.slice(2));
    let stale = 0;
    for (const [file, text] of outputs(opts.root)) {
        const now = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
        if (now === text) continue;
        if (!opts.check) {
            fs.mkdirSync(path.dirname(file), { recursive: true });
            fs.writeFileSync(file, text);
            console.log(`gen-schema: wrote ${path.relative(opts.root, file)}`);
            continue;
        }
        stale++;
        const tmp = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "gen-schema-")), path.basename(file));
        fs.writeFileSync(tmp, text);
        const d = spawnSync("diff", ["-u", "--label", `${path.relative(opts.root, file)} (committed)`, "--label", `${path.relative(opts.root, file)} (from schema/)`, fs.existsSync(file) ? file : "/dev/null", tmp], { encoding: "utf8" });
        process.stdout.write(d.stdout);
        fs.rmSync(path.dirname(tmp), { recursive: true, force: true });
    }
    if (stale) {
        console.error(`gen-schema: ${stale} generated file(s) are stale: run \`npm run gen\` and commit the result`);
        process.exit(1);
    }
}

main();

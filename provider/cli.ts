#!/usr/bin/env node
/**
 * The `pulumi-vfio` command. Subcommands are entries of {@link COMMANDS}: each declares its options for
 * `node:util` parseArgs, its positional arguments and a `run`; adding one is one more entry.
 *
 * Conventions: `--version`, `help [COMMAND]` (= `COMMAND --help`), `-o -` writes to stdout. Data (reports, JSON,
 * generated files) goes to stdout or the file named; notes, warnings and errors go to stderr, never into the data.
 * Exit status: 0 success, 1 error (one line on stderr) or problems found (`validate`), 2 usage error.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { parseArgs, ParseArgsConfig } from "node:util";
import { hostFor } from "./host";
import { Connection } from "./host/ssh";
import { readPrivateKeyFile } from "./host/sshConfig";
import { Host } from "./host/types";
import { formatInventory, getHostInventory } from "./inventory";
import { renderHostYaml } from "./hostInit";
import { formatHostStatus, getHostStatus } from "./hostStatus";
import { formatRelease, releaseDevice, stillHeld } from "./release";
import { parseAddress } from "./sysfs/pci";
import { packageRoot } from "./check";
import { HostDefinition, HostDefinitionError, formatProblem, parseHostDefinition } from "../sdk/hostDefinition";

/** Where a command writes, and how it reaches hosts and files: injectable so tests run `main` in-process. */
export interface CliIO {
    stdout(text: string): void;
    stderr(text: string): void;
    /** The host for a connection (undefined: this machine). `privileged`: the command changes the host (locally
     *  through `sudo -n` when not root); reading commands get false. */
    host(connection?: Connection, privileged?: boolean): Host;
    readFile(path: string): string;
    /** Create a file (0644) and its missing directories (0755); `overwrite` false fails with EEXIST when it exists.
     *  Default: the local file system. */
    writeFile?(path: string, text: string, overwrite: boolean): void;
    env: NodeJS.ProcessEnv;
    /** The directory relative paths on the command line are relative to. Default: the process's. */
    cwd?: string;
}

function writeLocalFile(file: string, text: string, overwrite: boolean): void {
    // `init -o hosts/gpu-box.yaml` in a fresh project: make `hosts/` as `mkdir -p` would.
    try {
        fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
    } catch (e) {
        // EEXIST here is a file where the directory should be, not the output file existing.
        const code = (e as NodeJS.ErrnoException).code;
        throw Object.assign(new Error(`${path.dirname(file)} is not a directory`), { code: code === "EEXIST" ? "ENOTDIR" : code });
    }
    fs.writeFileSync(file, text, { mode: 0o644, flag: overwrite ? "w" : "wx" });
}

export function processIO(): CliIO {
    return {
        stdout: (t) => process.stdout.write(t),
        stderr: (t) => process.stderr.write(t),
        // Reading commands need no privilege: locally they run without sudo, so a plain user can use them.
        host: (c, privileged) => hostFor(c, !!privileged),
        readFile: (p) => fs.readFileSync(p, "utf8"),
        writeFile: writeLocalFile,
        env: process.env,
    };
}

/** A mistake in the command line: exit status 2 with the command's usage. */
export class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig["options"]>;
type Values = Record<string, string | boolean | undefined>;

interface Command {
    /** One line for the command list. */
    summary: string;
    /** The synopsis after `pulumi-vfio <name> `. */
    synopsis: string;
    /** Lines describing the options. */
    help: string[];
    /** Lines after the options: what the command does that its options do not say. */
    notes?: string[];
    options: Options;
    /** Positional arguments: their name for messages, how many are required and allowed. Default: none. */
    positionals?: { name: string; min: number; max: number };
    run(values: Values, io: CliIO, positionals: string[]): Promise<number>;
}

/** SSH options shared by every command that reads or changes a host. */
const SSH_OPTIONS: Options = {
    ssh: { type: "string" },
    identity: { type: "string", short: "i" },
    "host-key": { type: "string" },
};
const SSH_HELP = [
    "  --ssh [USER@]HOST[:PORT]  read a remote host over SSH (HOST may be a ~/.ssh/config alias; default user root,",
    "                            others need passwordless sudo)",
    "  -i, --identity FILE       private key file (default: the ssh-agent at SSH_AUTH_SOCK, then ~/.ssh/id_*)",
    "  --host-key KEY            expected host key (`ssh-ed25519 AAAA...` or `SHA256:...`); default: the key must be",
    "                            in ~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts, as for ssh",
];

/**
 * `[user@]host[:port]` (IPv6 as `[addr]` or `[addr]:port`) → host, user, port.
 * @throws UsageError for anything else.
 */
export function parseSshTarget(target: string): { host: string; user?: string; port?: number } {
    const m = /^(?:([^@\s:]+)@)?(?:\[([0-9A-Fa-f:.%\w]+)\]|([^@\s:[\]]+))(?::(\d+))?$/.exec(target);
    if (!m) throw new UsageError(`--ssh ${JSON.stringify(target)}: expected [USER@]HOST[:PORT]`);
    const port = m[4] === undefined ? undefined : Number(m[4]);
    if (port !== undefined && (port < 1 || port > 65535)) throw new UsageError(`--ssh ${JSON.stringify(target)}: port ${port} is out of range 1-65535`);
    return { host: m[2] ?? m[3], user: m[1], port };
}

/** The connection the SSH options describe, or undefined for this machine. Never puts key text in a message. */
export function connectionFromOptions(values: Values, io: CliIO): Connection | undefined {
    const ssh = values.ssh as string | undefined;
    const identity = values.identity as string | undefined;
    const hostKey = values["host-key"] as string | undefined;
    if (ssh === undefined) {
        if (identity !== undefined || hostKey !== undefined) throw new UsageError(`${identity !== undefined ? "-i" : "--host-key"} needs --ssh`);
        return undefined;
    }
    const target = parseSshTarget(ssh);
    // Fail fast instead of retrying ten dials against a wrong host.
    const conn: Connection = { host: target.host, dialErrorLimit: 2, perDialTimeout: 15 };
    if (target.user !== undefined) conn.user = target.user;
    if (target.port !== undefined) conn.port = target.port;
    if (hostKey !== undefined) conn.hostKey = hostKey;
    if (identity !== undefined) {
        conn.privateKey = readPrivateKeyFile(identity, io.readFile);
    } else if (io.env.SSH_AUTH_SOCK) {
        conn.agentSocketPath = io.env.SSH_AUTH_SOCK;
    }
    // Without either, the SSH host tries ssh's default identities (~/.ssh/id_*) and says what it looked for.
    return conn;
}

async function onHost<T>(values: Values, io: CliIO, fn: (host: Host) => Promise<T>, privileged = false): Promise<T> {
    const host = io.host(connectionFromOptions(values, io), privileged);
    try {
        return await fn(host);
    } finally {
        await host.close();
    }
}

export const COMMANDS: Record<string, Command> = {
    inventory: {
        summary: "show the host's IOMMU groups, PCI devices, drivers, SR-IOV, mdev types and kvmfr devices",
        synopsis: "[--ssh [USER@]HOST[:PORT] [-i KEYFILE] [--host-key KEY]] [--json]",
        help: [...SSH_HELP, "  --json                    print the inventory as JSON (the shape getHost() returns)"],
        options: { ...SSH_OPTIONS, json: { type: "boolean" } },
        async run(values, io) {
            const inv = await onHost(values, io, getHostInventory);
            io.stdout(values.json ? JSON.stringify(inv, null, 2) + "\n" : formatInventory(inv));
            // The text report opens with the fix; JSON carries it as data (iommu.fix), which a person may not read.
            if (values.json && !inv.iommu.enabled) warn(io, "inventory", inv.iommu.fix ?? "the IOMMU is off");
            return 0;
        },
    },
    init: {
        summary: "write a starting host.yaml from what the host has (GPUs and their IOMMU groups, SR-IOV, mdev types)",
        synopsis: "[--ssh [USER@]HOST[:PORT] [-i KEYFILE] [--host-key KEY]] [-o FILE [--force]] [--schema PATH]",
        help: [
            ...SSH_HELP,
            "  -o, --output FILE         write the file there, creating its directory (default, or `-`: print it);",
            "                            refuses to overwrite without --force",
            "  --force                   overwrite FILE",
            "  --schema PATH             the $schema for editors: a URL, or a path (relative to here) written relative to FILE",
            "                            (default: the nearest node_modules/pulumi-vfio/schema/host.schema.json, else this package's)",
        ],
        notes: ["The key file's path (-i) is written relative to FILE's directory, where host.yaml's privateKeyFile is read from", "(as ~/... when it is under your home directory)."],
        options: { ...SSH_OPTIONS, output: { type: "string", short: "o" }, force: { type: "boolean" }, schema: { type: "string" } },
        async run(values, io) {
            const given = values.output as string | undefined;
            const output = given === "-" ? undefined : given;
            if (values.force && output === undefined) throw new UsageError("--force needs -o FILE");
            const cwd = io.cwd ?? process.cwd();
            // Relative paths inside a host file are read from its directory (privateKeyFile by the loader, $schema by
            // yaml-language-server); printed, the file is assumed to be saved here.
            const fileAbs = output === undefined ? undefined : path.resolve(cwd, output);
            const baseDir = fileAbs === undefined ? cwd : path.dirname(fileAbs);
            const connection = connectionFromOptions(values, io);
            const inv = await onHost(values, io, getHostInventory);
            const identity = values.identity as string | undefined;
            const text = renderHostYaml(inv, {
                schemaPath: schemaReference(values.schema as string | undefined, cwd, baseDir),
                connection: connection && {
                    host: connection.host,
                    user: connection.user,
                    port: connection.port,
                    hostKey: connection.hostKey,
                    // The path, never the key: the file is meant for git.
                    privateKeyFile: identity === undefined ? undefined : keyFileReference(identity, cwd, baseDir),
                },
            });
            try {
                parseHostDefinition(text, { file: fileAbs ?? path.join(cwd, "host.yaml") });
            } catch (e) {
                // A bug of ours, not the user's: say so rather than write a file that fails later.
                if (e instanceof HostDefinitionError) throw new Error(`internal error: the generated host file is not valid: ${e.message}`);
                throw e;
            }
            if (!inv.iommu.enabled) warn(io, "init", `${inv.iommu.fix ?? "the IOMMU is off"} (the file says so too)`);
            if (output === undefined) {
                io.stdout(text);
                return 0;
            }
            try {
                (io.writeFile ?? writeLocalFile)(output, text, !!values.force);
            } catch (e) {
                const code = (e as NodeJS.ErrnoException).code;
                if (code === "EEXIST") throw new Error(`${output} exists: pass --force to overwrite it`);
                throw new Error(`cannot write ${output}${code ? ` (${code})` : ""}`);
            }
            io.stderr(`wrote ${output}: uncomment what this host should have, then \`pulumi preview\`\n`);
            return 0;
        },
    },
    validate: {
        summary: "check host files offline, as `pulumi preview` would (schema, references, claims); for CI",
        synopsis: "FILE...",
        help: [
            "  FILE...                   host files (host.yaml); no host is read. Prints every problem as",
            "                            FILE:LINE:COLUMN: KEY: MESSAGE and exits 1, or one summary line per valid file and exits 0",
        ],
        options: {},
        positionals: { name: "FILE", min: 1, max: Infinity },
        async run(_values, io, files) {
            let failed = 0;
            for (const file of files) {
                let text: string;
                try {
                    text = io.readFile(file);
                } catch (e) {
                    const code = (e as NodeJS.ErrnoException).code;
                    io.stderr(`pulumi-vfio validate: error: cannot read ${file}${code === "ENOENT" ? ": it does not exist" : code ? ` (${code})` : ""}\n`);
                    failed++;
                    continue;
                }
                try {
                    io.stdout(`${file}: valid: ${describeDefinition(parseHostDefinition(text, { file }))}\n`);
                } catch (e) {
                    if (!(e instanceof HostDefinitionError)) throw e;
                    for (const p of e.problems) io.stdout(formatProblem({ file, ...p }) + "\n");
                    io.stderr(`pulumi-vfio validate: ${file}: ${e.problems.length === 1 ? "1 problem" : `${e.problems.length} problems`}\n`);
                    failed++;
                }
            }
            return failed ? 1 : 0;
        },
    },
    status: {
        summary: "show what is bound and created on the host now (overrides, vfio-pci, mdevs, VFs, kvmfr, boot files, VMs)",
        synopsis: "[--ssh [USER@]HOST[:PORT] [-i KEYFILE] [--host-key KEY]] [--json]",
        help: [...SSH_HELP, "  --json                    print the status as JSON"],
        options: { ...SSH_OPTIONS, json: { type: "boolean" } },
        async run(values, io) {
            const status = await onHost(values, io, getHostStatus);
            io.stdout(values.json ? JSON.stringify(status, null, 2) + "\n" : formatHostStatus(status));
            if (status.seesEveryProcess === false && status.vfioGroups.length) {
                warn(io, "status", "not running as root: processes of other users that hold a /dev/vfio node are not seen; run it as root to see every holder");
            }
            return 0;
        },
    },
    release: {
        summary: "give a device (--group: its whole IOMMU group) back to the host drivers, e.g. after the Pulumi state was lost",
        synopsis: "ADDRESS [--group] [--dry-run] [--ssh [USER@]HOST[:PORT] [-i KEYFILE] [--host-key KEY]]",
        help: [
            "  ADDRESS                   the PCI address (0000:01:00.0, or 01:00.0 as lspci prints it)",
            "  --group                   release every member of its IOMMU group (a GPU and its HDMI audio)",
            "  --dry-run                 print the sysfs writes and change nothing",
            ...SSH_HELP,
        ],
        notes: [
            "Refused while a process (a VM) holds /dev/vfio/<group>. Under the host lock, for each device on vfio-pci/pci-stub or",
            "with a driver_override: clear driver_override, unbind, drivers_probe, remove /etc/driverctl.d/pci-ADDRESS (it would",
            "bind it again at boot); then print the driver each device is on. Exit 1 when one is still on vfio-pci.",
        ],
        options: { ...SSH_OPTIONS, group: { type: "boolean" }, "dry-run": { type: "boolean" } },
        positionals: { name: "ADDRESS", min: 1, max: 1 },
        async run(values, io, [input]) {
            try {
                parseAddress(input);
            } catch (e) {
                throw new UsageError((e as Error).message);
            }
            const report = await onHost(values, io, (host) => releaseDevice(host, input, { group: !!values.group, dryRun: !!values["dry-run"] }), true);
            io.stdout(formatRelease(report));
            if (report.dryRun) return 0;
            for (const m of report.members) {
                if (m.released && m.after.driver === null) warn(io, "release", `${m.address} has no driver now: no host driver claimed it (load its module with modprobe, or check dmesg)`);
            }
            const held = stillHeld(report);
            if (held.length) {
                throw new Error(
                    `${held.map((m) => `${m.address} is still on ${m.after.driver ?? "no driver"}${m.after.override ? ` with driver_override ${m.after.override}` : ""}`).join("; ")}: ` +
                        "its ids may be in vfio-pci's new_id list or vfio-pci.ids= on the kernel command line (echo VVVV DDDD > /sys/bus/pci/drivers/vfio-pci/remove_id)",
                );
            }
            return 0;
        },
    },
};

/** A note that is not data: on stderr, prefixed like errors. */
function warn(io: CliIO, command: string, message: string): void {
    io.stderr(`pulumi-vfio ${command}: warning: ${oneLine(message)}\n`);
}

/** `host "gpu-box" (root@gpu-box.lan): 1 binding, 2 mdevs, 1 VM` — what a valid file converges. */
export function describeDefinition(def: HostDefinition): string {
    const counts: [keyof HostDefinition, string, string][] = [
        ["bindings", "binding", "bindings"],
        ["virtualFunctions", "virtualFunctions entry", "virtualFunctions entries"],
        ["mdevs", "mdev", "mdevs"],
        ["kvmfr", "kvmfr device", "kvmfr devices"],
        ["vms", "VM", "VMs"],
    ];
    const parts = counts.flatMap(([k, one, many]) => {
        const n = Object.keys((def[k] as object | undefined) ?? {}).length;
        return n ? [`${n} ${n === 1 ? one : many}`] : [];
    });
    const c = def.connection;
    const where = c ? `${c.user ?? "root"}@${c.host}${c.port ? `:${c.port}` : ""}` : "this machine";
    const what = parts.join(", ") || "nothing to converge (every entry is commented out)";
    return `host ${JSON.stringify(def.name)} (${where}): ${what}`;
}

const isUrl = (s: string) => /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(s);
/** A path relative to `from`, written `./x` or `../x` so editors and readers see it is relative. */
const relativeRef = (from: string, to: string) => {
    const r = path.relative(from, to);
    return r.startsWith("..") ? r : `./${r}`;
};

/**
 * The `$schema` written into a host file whose directory is `baseDir`. yaml-language-server reads a relative
 * `$schema` from the file's own directory (redhat-developer/yaml-language-server#499), so a path is written
 * relative to it: the one given (relative to `cwd`, as any path typed on a command line), else the nearest
 * `node_modules/pulumi-vfio` above the file (where npm installs this package in the project), else this package's
 * own schema (relative when the file is inside the package's tree, as in this repository, else absolute).
 */
export function schemaReference(given: string | undefined, cwd: string, baseDir: string): string {
    if (given !== undefined) return isUrl(given) || path.isAbsolute(given) ? given : relativeRef(baseDir, path.resolve(cwd, given));
    for (let dir = baseDir; ; dir = path.dirname(dir)) {
        const candidate = path.join(dir, "node_modules", "pulumi-vfio", "schema", "host.schema.json");
        if (fs.existsSync(candidate)) return relativeRef(baseDir, candidate);
        if (path.dirname(dir) === dir) break;
    }
    const root = packageRoot();
    const own = path.join(root, "schema", "host.schema.json");
    return baseDir === root || baseDir.startsWith(root + path.sep) ? relativeRef(baseDir, own) : own;
}

/**
 * The `privateKeyFile` for a key given on the command line as `identity` (relative to `cwd`), in a host file whose
 * directory is `baseDir`: the loader resolves a relative `privateKeyFile` from the host file's directory and
 * expands `~/` (sdk/hostDefinition `resolveKeyFile`). A relative path stays relative (to the file), so a project
 * moved elsewhere keeps working; an absolute path under the home directory (the shell expands `~/.ssh/id`) is
 * written `~/...`, so the file works for another user too; any other absolute path stays absolute.
 */
export function keyFileReference(identity: string, cwd: string, baseDir: string, home = os.homedir()): string {
    if (identity === "~" || identity.startsWith("~/")) return identity;
    const abs = path.resolve(cwd, identity);
    if (path.isAbsolute(identity)) return home && abs.startsWith(home + path.sep) ? `~/${path.relative(home, abs)}` : abs;
    return path.relative(baseDir, abs);
}

/** This package's version (package.json), for `--version`. */
export function packageVersion(): string {
    return JSON.parse(fs.readFileSync(path.join(packageRoot(), "package.json"), "utf8")).version;
}

export function usage(): string {
    const names = Object.keys(COMMANDS);
    const width = Math.max(...names.map((n) => n.length));
    return [
        "usage: pulumi-vfio <command> [options]",
        "       pulumi-vfio help [<command>] | --help | --version",
        "",
        "commands:",
        ...names.map((n) => `  ${n.padEnd(width)}  ${COMMANDS[n].summary}`),
        "",
        "Run `pulumi-vfio help <command>` (or `pulumi-vfio <command> --help`) for a command's options.",
    ].join("\n");
}

function commandUsage(name: string): string {
    const c = COMMANDS[name];
    return [`usage: pulumi-vfio ${name} ${c.synopsis}`, "", c.summary, "", "options:", ...c.help, "  -h, --help                show this help", ...(c.notes ? ["", ...c.notes] : [])].join("\n");
}

const oneLine = (s: string) => s.replace(/\s+/g, " ").trim();
const commandNamed = (name: string) => (Object.prototype.hasOwnProperty.call(COMMANDS, name) ? COMMANDS[name] : undefined);

/** Run the command line `argv` (without node and the script). Resolves with the exit status. */
export async function main(argv: string[], io: CliIO = processIO()): Promise<number> {
    const [name, ...rest] = argv;
    if (name === undefined) {
        io.stderr(usage() + "\n");
        return 2;
    }
    if (name === "-h" || name === "--help" || (name === "help" && (rest.length === 0 || (rest.length === 1 && (rest[0] === "-h" || rest[0] === "--help"))))) {
        io.stdout(usage() + "\n");
        return 0;
    }
    if (name === "--version") {
        io.stdout(`pulumi-vfio ${packageVersion()}\n`);
        return 0;
    }
    if (name === "help") {
        if (rest.length > 1 || !commandNamed(rest[0])) {
            io.stderr(`pulumi-vfio help: ${rest.length > 1 ? "takes one command" : `unknown command ${JSON.stringify(rest[0])}`}\n${usage()}\n`);
            return 2;
        }
        io.stdout(commandUsage(rest[0]) + "\n");
        return 0;
    }
    const command = commandNamed(name);
    if (!command) {
        io.stderr(`pulumi-vfio: unknown command ${JSON.stringify(name)}\n${usage()}\n`);
        return 2;
    }
    let values: Values;
    let positionals: string[];
    try {
        ({ values, positionals } = parseArgs({ args: rest, options: { ...command.options, help: { type: "boolean", short: "h" } }, strict: true, allowPositionals: !!command.positionals }));
        const p = command.positionals;
        if (!values.help && p && positionals.length < p.min) throw new UsageError(`missing ${p.name}`);
        if (p && positionals.length > p.max) throw new UsageError(`Unexpected argument '${positionals[p.max]}': only ${p.max === 1 ? "one" : p.max} ${p.name}`);
    } catch (e) {
        io.stderr(`pulumi-vfio ${name}: ${oneLine((e as Error).message)}\n${commandUsage(name)}\n`);
        return 2;
    }
    if (values.help) {
        io.stdout(commandUsage(name) + "\n");
        return 0;
    }
    try {
        return await command.run(values, io, positionals);
    } catch (e) {
        if (e instanceof UsageError) {
            io.stderr(`pulumi-vfio ${name}: ${oneLine(e.message)}\n${commandUsage(name)}\n`);
            return 2;
        }
        io.stderr(`pulumi-vfio ${name}: error: ${oneLine((e as Error)?.message ?? String(e))}\n`);
        return 1;
    }
}

if (require.main === module) {
    main(process.argv.slice(2)).then(
        (code) => (process.exitCode = code),
        (e) => {
            process.stderr.write(`pulumi-vfio: error: ${oneLine(String((e as Error)?.message ?? e))}\n`);
            process.exitCode = 1;
        },
    );
}

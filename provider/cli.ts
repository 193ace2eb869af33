#!/usr/bin/env node
/**
 * The `pulumi-vfio` command. Subcommands are entries of {@link COMMANDS}: each declares its options for
 * `node:util` parseArgs and a `run`; adding one (issue 6's `init`) is one more entry.
 *
 * Exit status: 0 success, 1 error (one line on stderr), 2 usage error.
 */
import * as fs from "fs";
import { parseArgs, ParseArgsConfig } from "node:util";
import { hostFor } from "./host";
import { Connection } from "./host/ssh";
import { readPrivateKeyFile } from "./host/sshConfig";
import { Host } from "./host/types";
import { formatInventory, getHostInventory } from "./inventory";
import { renderHostYaml } from "./hostInit";
import { HostDefinitionError, parseHostDefinition } from "../sdk/hostDefinition";

/** Where a command writes, and how it reaches hosts and files: injectable so tests run `main` in-process. */
export interface CliIO {
    stdout(text: string): void;
    stderr(text: string): void;
    /** The host for a connection (undefined: this machine). */
    host(connection?: Connection): Host;
    readFile(path: string): string;
    /** Create a file (0644); `overwrite` false fails with EEXIST when it exists. Default: the local file system. */
    writeFile?(path: string, text: string, overwrite: boolean): void;
    env: NodeJS.ProcessEnv;
}

function writeLocalFile(path: string, text: string, overwrite: boolean): void {
    fs.writeFileSync(path, text, { mode: 0o644, flag: overwrite ? "w" : "wx" });
}

export function processIO(): CliIO {
    return {
        stdout: (t) => process.stdout.write(t),
        stderr: (t) => process.stderr.write(t),
        // Reading the inventory needs no privilege: locally it runs without sudo, so a plain user can use it.
        host: (c) => hostFor(c, false),
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
    options: Options;
    run(values: Values, io: CliIO): Promise<number>;
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

async function onHost<T>(values: Values, io: CliIO, fn: (host: Host) => Promise<T>): Promise<T> {
    const host = io.host(connectionFromOptions(values, io));
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
            return 0;
        },
    },
    init: {
        summary: "write a starting host.yaml from what the host has (GPUs and their IOMMU groups, SR-IOV, mdev types)",
        synopsis: "[--ssh [USER@]HOST[:PORT] [-i KEYFILE] [--host-key KEY]] [-o FILE [--force]] [--schema PATH]",
        help: [
            ...SSH_HELP,
            "  -o, --output FILE         write the file there (default: print it); refuses to overwrite without --force",
            "  --force                   overwrite FILE",
            "  --schema PATH             the $schema path for editors (default ./node_modules/pulumi-vfio/schema/host.schema.json)",
        ],
        options: { ...SSH_OPTIONS, output: { type: "string", short: "o" }, force: { type: "boolean" }, schema: { type: "string" } },
        async run(values, io) {
            const output = values.output as string | undefined;
            if (values.force && output === undefined) throw new UsageError("--force needs -o FILE");
            const connection = connectionFromOptions(values, io);
            const inv = await onHost(values, io, getHostInventory);
            const text = renderHostYaml(inv, {
                schemaPath: values.schema as string | undefined,
                connection: connection && {
                    host: connection.host,
                    user: connection.user,
                    port: connection.port,
                    hostKey: connection.hostKey,
                    // The path, never the key: the file is meant for git.
                    privateKeyFile: values.identity as string | undefined,
                },
            });
            try {
                parseHostDefinition(text, { file: output ?? "host.yaml" });
            } catch (e) {
                // A bug of ours, not the user's: say so rather than write a file that fails later.
                if (e instanceof HostDefinitionError) throw new Error(`internal error: the generated host file is not valid: ${e.message}`);
                throw e;
            }
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
};

export function usage(): string {
    const names = Object.keys(COMMANDS);
    const width = Math.max(...names.map((n) => n.length));
    return [
        "usage: pulumi-vfio <command> [options]",
        "",
        "commands:",
        ...names.map((n) => `  ${n.padEnd(width)}  ${COMMANDS[n].summary}`),
        "",
        "Run `pulumi-vfio <command> --help` for a command's options.",
    ].join("\n");
}

function commandUsage(name: string): string {
    const c = COMMANDS[name];
    return [`usage: pulumi-vfio ${name} ${c.synopsis}`, "", c.summary, "", "options:", ...c.help, "  -h, --help                show this help"].join("\n");
}

const oneLine = (s: string) => s.replace(/\s+/g, " ").trim();

/** Run the command line `argv` (without node and the script). Resolves with the exit status. */
export async function main(argv: string[], io: CliIO = processIO()): Promise<number> {
    const [name, ...rest] = argv;
    if (name === undefined) {
        io.stderr(usage() + "\n");
        return 2;
    }
    if (name === "-h" || name === "--help" || name === "help") {
        io.stdout(usage() + "\n");
        return 0;
    }
    const command = Object.prototype.hasOwnProperty.call(COMMANDS, name) ? COMMANDS[name] : undefined;
    if (!command) {
        io.stderr(`pulumi-vfio: unknown command ${JSON.stringify(name)}\n${usage()}\n`);
        return 2;
    }
    let values: Values;
    try {
        ({ values } = parseArgs({ args: rest, options: { ...command.options, help: { type: "boolean", short: "h" } }, strict: true, allowPositionals: false }));
    } catch (e) {
        io.stderr(`pulumi-vfio ${name}: ${oneLine((e as Error).message)}\n${commandUsage(name)}\n`);
        return 2;
    }
    if (values.help) {
        io.stdout(commandUsage(name) + "\n");
        return 0;
    }
    try {
        return await command.run(values, io);
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

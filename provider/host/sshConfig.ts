/**
 * What ssh(1) would use for a connection: ssh_config(5) (`~/.ssh/config`, then `/etc/ssh/ssh_config`, first value
 * wins, parsed by the `ssh-config` library), the default identities and known_hosts files, and the checks on key
 * text shared by the provider and the CLI. Explicit connection fields win over the config files.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import SSHConfig from "ssh-config";
import { utils as sshUtils } from "ssh2";

/** Where ssh's files are: injectable so tests read a temporary tree instead of the user's own. */
export interface SshEnvironment {
    /** The home directory (`~`, `~/.ssh/config`, `~/.ssh/known_hosts`, `~/.ssh/id_*`). Default: os.homedir(). */
    home?: string;
    /** The system directory (`ssh_config`, `ssh_known_hosts`). Default `/etc/ssh`. */
    etcDir?: string;
    /** The ssh-agent socket when the connection names none. Default: `SSH_AUTH_SOCK`; "" for none. */
    agentSocket?: string;
}

/** The settings of one connection after ssh_config, with defaults filled in. */
export interface SshSettings {
    /** The address to dial (HostName, else the connection's host). */
    hostName: string;
    port: number;
    user: string;
    /** The name the host key is looked up under in known_hosts (HostKeyAlias, else hostName). */
    hostKeyName: string;
    /** Key files to try when the connection gives no key or password, ~ expanded; `identityFilesFromConfig` false:
     *  ssh's defaults (missing ones are skipped silently). */
    identityFiles: string[];
    identityFilesFromConfig: boolean;
    /** ssh-agent socket to try, if any (IdentityAgent, else the environment's). */
    agent?: string;
    userKnownHostsFiles: string[];
    globalKnownHostsFiles: string[];
    /** StrictHostKeyChecking: `yes` (and `ask`: there is nobody to ask) refuses an unknown key; `accept-new` (and
     *  `no`/`off`) records an unknown key in the first user known_hosts file. A changed key is always refused. */
    strict: "yes" | "accept-new";
    hashKnownHosts: boolean;
}

/** ssh_config(5) IdentityFile: the default identities, in OpenSSH's order. */
export const DEFAULT_IDENTITY_FILES = ["id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk"];

function homeOf(env: SshEnvironment): string {
    return env.home ?? os.homedir();
}

/** `~` and `~/...` are the home directory (other users' `~name` are not ours to guess). */
export function expandHome(p: string, home: string): string {
    if (p === "~") return home;
    if (p.startsWith("~/")) return path.join(home, p.slice(2));
    return p;
}

function readConfig(file: string): SSHConfig | undefined {
    let text: string;
    try {
        text = fs.readFileSync(file, "utf8");
    } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "ENOTDIR") return undefined;
        throw new Error(`cannot read the ssh config file ${file}${code ? ` (${code})` : ""}`);
    }
    try {
        return SSHConfig.parse(text);
    } catch (e) {
        throw new Error(`cannot parse the ssh config file ${file}: ${(e as Error).message}`);
    }
}

type Computed = Record<string, string | string[]>;

/** The first value each option gets across the files (ssh_config(5): "the first obtained value will be used"),
 *  IdentityFile accumulating. `Match exec` is never run: we do not start a shell from a config file. */
function compute(files: string[], host: string, user: string | undefined): Computed {
    const out: Computed = {};
    for (const f of files) {
        const cfg = readConfig(f);
        if (!cfg) continue;
        const got = cfg.compute(user === undefined ? { Host: host } : { Host: host, User: user }, { ignoreCase: true, matchExec: false });
        for (const [k, v] of Object.entries(got)) {
            if (k === "identityfile") out[k] = [...((out[k] as string[] | undefined) ?? []), ...(v as string[])];
            else if (!(k in out)) out[k] = v;
        }
    }
    return out;
}

const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v.join(" ") : v);
const list = (v: string | string[] | undefined): string[] => (v === undefined ? [] : Array.isArray(v) ? v : v.split(/\s+/)).filter(Boolean);

/**
 * The settings for `host` as ssh(1) would resolve them, with explicit `port`/`user` winning.
 * @throws Error naming the config file's option when a value cannot be used (a Port that is not a number).
 */
export function resolveSsh(conn: { host: string; port?: number; user?: string; agentSocketPath?: string }, env: SshEnvironment = {}): SshSettings {
    const home = homeOf(env);
    const etc = env.etcDir ?? "/etc/ssh";
    const c = compute([path.join(home, ".ssh", "config"), path.join(etc, "ssh_config")], conn.host, conn.user);
    const hostName = one(c.hostname)?.replace(/%h/g, conn.host) || conn.host;
    let port = conn.port;
    if (port === undefined && c.port !== undefined) {
        port = Number(one(c.port));
        if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`ssh config: Port ${JSON.stringify(one(c.port))} for ${conn.host} is not a port number`);
    }
    const configured = list(c.identityfile);
    const identityFilesFromConfig = configured.length > 0;
    const identityFiles = identityFilesFromConfig
        ? configured.filter((f) => f.toLowerCase() !== "none").map((f) => expandHome(f, home))
        : DEFAULT_IDENTITY_FILES.map((f) => path.join(home, ".ssh", f));
    const agentOption = one(c.identityagent);
    let agent = conn.agentSocketPath ?? (env.agentSocket !== undefined ? env.agentSocket : process.env.SSH_AUTH_SOCK);
    if (conn.agentSocketPath === undefined && agentOption !== undefined) {
        if (agentOption.toLowerCase() === "none") agent = undefined;
        else if (agentOption !== "SSH_AUTH_SOCK" && !agentOption.startsWith("$")) agent = expandHome(agentOption, home);
    }
    const userFiles = list(c.userknownhostsfile);
    const globalFiles = list(c.globalknownhostsfile);
    const strictValue = (one(c.stricthostkeychecking) ?? "yes").toLowerCase();
    return {
        hostName,
        port: port ?? 22,
        user: conn.user ?? one(c.user) ?? "root",
        hostKeyName: one(c.hostkeyalias) ?? hostName,
        identityFiles,
        identityFilesFromConfig,
        agent: agent || undefined,
        userKnownHostsFiles: (userFiles.length ? userFiles : ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]).filter((f) => f.toLowerCase() !== "none").map((f) => expandHome(f, home)),
        globalKnownHostsFiles: (globalFiles.length ? globalFiles : [path.join(etc, "ssh_known_hosts"), path.join(etc, "ssh_known_hosts2")]).filter((f) => f.toLowerCase() !== "none").map((f) => expandHome(f, home)),
        strict: ["accept-new", "no", "off"].includes(strictValue) ? "accept-new" : "yes",
        hashKnownHosts: (one(c.hashknownhosts) ?? "no").toLowerCase() === "yes",
    };
}

/** Home-relative paths are shown as `~/...`, as ssh shows them. */
export function displayPath(p: string, env: SshEnvironment = {}): string {
    const home = homeOf(env);
    return p.startsWith(home + path.sep) ? "~" + p.slice(home.length) : p;
}

/** Why key text cannot be used as a private key, or undefined when it can. */
export type KeyProblem = "public" | "encrypted" | "wrong-passphrase" | "unreadable";

/** The message for a key problem, without the key: meant to follow "cannot use <the key>: ". */
export function keyProblemMessage(p: KeyProblem): string {
    switch (p) {
        case "public":
            return "that is a public key; give the private key file (without .pub)";
        case "encrypted":
            return "it is encrypted and no passphrase is given: add it to ssh-agent (ssh-add) and leave it out, or give its passphrase (privateKeyPassword)";
        case "wrong-passphrase":
            return "the passphrase does not decrypt it";
        case "unreadable":
            return "it is not a private key ssh2 can read (OpenSSH or PEM)";
    }
}

const PUBLIC_KEY_LINE = /^\s*(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)(?:-cert-v01@openssh\.com)?\s+AAAA/;

/**
 * What is wrong with `text` as a private key (undefined: nothing). A public key (`ssh-ed25519 AAAA...`, the
 * content of a `.pub` file, or an RFC 4716 public key block) is told apart from an unreadable one, since giving the
 * `.pub` file is the common mistake.
 */
export function privateKeyProblem(text: string | Buffer, passphrase?: string): KeyProblem | undefined {
    const s = text.toString();
    if (PUBLIC_KEY_LINE.test(s) || /BEGIN SSH2 PUBLIC KEY/.test(s)) return "public";
    const parsed = sshUtils.parseKey(text, passphrase);
    if (parsed instanceof Error) {
        if (/no passphrase/i.test(parsed.message)) return "encrypted";
        if (passphrase !== undefined && /decrypt|passphrase|bad/i.test(parsed.message)) return "wrong-passphrase";
        return /encrypted/i.test(parsed.message) && passphrase === undefined ? "encrypted" : "unreadable";
    }
    const key = Array.isArray(parsed) ? parsed[0] : parsed;
    if (!key || !key.isPrivateKey()) return "public";
    return undefined;
}

/**
 * Read a private key file for the CLI's `-i` (and anything else that takes a key file): the text, checked.
 * @throws Error naming the file and what is wrong, never its content.
 */
export function readPrivateKeyFile(file: string, read: (p: string) => string = (p) => fs.readFileSync(p, "utf8")): string {
    let text: string;
    try {
        text = read(file);
    } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        throw new Error(`cannot read the key file ${file}${code ? ` (${code})` : ""}`);
    }
    const problem = privateKeyProblem(text);
    if (problem) throw new Error(`cannot use the key file ${file}: ${problem === "encrypted" ? "it is encrypted: add it to ssh-agent (ssh-add) and omit -i" : keyProblemMessage(problem)}`);
    return text;
}

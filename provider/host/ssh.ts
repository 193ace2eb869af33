/**
 * A machine over SSH as a {@link Host}, with the `ssh2` library. One connection per host object, and on it one exec
 * channel running the same constant interpreter as the local host (argv quoted word by word, never a shell string
 * built from input) for every batch, so a batch costs one network round trip and no new process. While idle the
 * connection does not keep Node alive (its socket is unreferenced; TCP keepalive instead of an SSH-level timer).
 */
import * as fs from "fs";
import * as net from "net";
import { Duplex } from "stream";
import { AnyAuthMethod, Client, ClientChannel, ConnectConfig } from "ssh2";
import { BATCH_ARGV, Interpreter, InterpreterProcess, quoteArgv } from "./batch";
import { appendKnownHost, blobKeyType, fingerprint, hostKeyAlgorithms, judgeHostKey, knownHostsName, knownKeyTypes, readKnownHosts } from "./knownHosts";
import { LOCK_TIMEOUT_MS } from "./lock";
import { SshEnvironment, SshSettings, displayPath, keyProblemMessage, privateKeyProblem, resolveSsh } from "./sshConfig";
import { Host, Op, OpResult, RunOptions, assertSafePath } from "./types";

/**
 * How to reach a host over SSH. The same shape as @pulumi/command's `remote.ConnectionArgs`, plus `hostKeyCheck`.
 * Fields left out come from ssh_config(5) (`~/.ssh/config`, then `/etc/ssh/ssh_config`) as ssh(1) would use them:
 * `Host` sections matched against `host`, then HostName, Port, User, IdentityFile, IdentityAgent, HostKeyAlias,
 * UserKnownHostsFile, GlobalKnownHostsFile, StrictHostKeyChecking and HashKnownHosts.
 */
export interface Connection {
    /** Host name, address, or a `Host` alias of ~/.ssh/config. */
    host: string;
    /** TCP port. Default: ssh_config's Port, else 22. */
    port?: number;
    /** User name. Default: ssh_config's User, else `root`; any other user needs passwordless `sudo`. */
    user?: string;
    /** Password (used when no key is given). Secret. */
    password?: string;
    /** Private key text (OpenSSH or PEM). Takes precedence over the password. Secret. */
    privateKey?: string;
    /** Passphrase of an encrypted private key. Secret. */
    privateKeyPassword?: string;
    /** ssh-agent socket. Default: ssh_config's IdentityAgent, else `SSH_AUTH_SOCK` when set. */
    agentSocketPath?: string;
    /** Expected host key, as in known_hosts/authorized_keys (`ssh-ed25519 AAAA...`) or a `SHA256:...` fingerprint.
     *  When given, it is the only key accepted, and known_hosts is not read. */
    hostKey?: string;
    /** How the host key is verified when `hostKey` is absent. `"known-hosts"` (default): as ssh(1) does, against
     *  ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts (or ssh_config's UserKnownHostsFile/GlobalKnownHostsFile);
     *  an unknown, changed or `@revoked` key fails the connection. `"insecure-skip"`: accept any key, so anyone
     *  between here and the host can impersonate it and gets root on it; only for throwaway hosts. */
    hostKeyCheck?: "known-hosts" | "insecure-skip";
    /** Seconds for each dial attempt. Default 15; 0 means no limit. */
    perDialTimeout?: number;
    /** Dial attempts before giving up. Default 10; -1 means unlimited. */
    dialErrorLimit?: number;
}

/**
 * Thrown when the host cannot be reached, refuses us, or does not let us act as root (sudo); every resource reports
 * it on its `connection` property. Never contains key material or passwords.
 */
export class ConnectionError extends Error {
    constructor(message: string) {
        super(message);
        this.name = "ConnectionError";
    }
}

export function connectionLabel(c: Connection): string {
    return `${c.user ?? "root"}@${c.host}:${c.port ?? 22}`;
}

/** Which machine a connection reaches, for diff: another host means another resource. Absent: `local`. */
export function hostIdentity(c?: Connection | null): string {
    return c && c.host ? connectionLabel(c) : "local";
}

function hostKeyMatches(expected: string, key: Buffer): boolean {
    const e = expected.trim();
    if (e.startsWith("SHA256:")) return e.replace(/=+$/, "") === fingerprint(key);
    const parts = e.split(/\s+/);
    const blob = parts.length >= 2 ? parts[1] : parts[0];
    return Buffer.from(blob, "base64").equals(key);
}

/** The key type an explicit `hostKey` line names, to offer that algorithm first; a fingerprint names none. */
function hostKeyType(expected: string): string | undefined {
    const e = expected.trim();
    if (e.startsWith("SHA256:")) return undefined;
    const parts = e.split(/\s+/);
    return blobKeyType(Buffer.from(parts.length >= 2 ? parts[1] : parts[0], "base64")) || undefined;
}

/** The name part of sshd's host key file for a key type (`/etc/ssh/ssh_host_<x>_key.pub`). */
function hostKeyFileType(type: string): string {
    if (type.startsWith("ecdsa-")) return "ecdsa";
    return type.replace(/^ssh-/, "");
}

/** sudo's own refusals (`-n` never prompts): no sudo rule, a password needed, or no sudo at all. */
const SUDO_REFUSED = /sudo: (?:a password is required|a terminal is required)|is not in the sudoers file|may not run sudo|sudo: command not found|sudo: not found/i;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One connection attempt's plan: the ssh2 config, and what the host key check and authentication will say. */
interface DialPlan {
    config: ConnectConfig;
    settings: SshSettings;
    /** What authentication will try, for the message when all of it fails (paths, never keys). */
    tried: string[];
    /** Identities skipped and why (an encrypted default key), for that message too. */
    notes: string[];
    /** Set when there is nothing to authenticate with: the message once the server asks for it. */
    noCredentials?: string;
}

export class SshHost implements Host {
    readonly name: string;
    private client?: Client;
    private connecting?: Promise<Client>;
    /** The login user (ssh_config's User when the connection names none), and whether it needs sudo. */
    private user: string;
    private sudo: boolean;
    private readonly interpreter: Interpreter;
    /** The TCP socket under the current client, and how many users (a running batch, an open QMP stream) need it
     *  to keep Node alive. */
    private socket?: net.Socket;
    private holds = 0;
    /** Who we log in as where, for messages: the connection's label, with what ssh_config made of it. */
    private label: string;
    /** Set when the remote sudo refused us: every later failure of this host is that. */
    private sudoRefused?: ConnectionError;

    /** `env`: where ssh's files are (tests point it at a temporary home); default the user's. */
    constructor(
        private readonly conn: Connection,
        private readonly env: SshEnvironment = {},
    ) {
        this.name = connectionLabel(conn);
        this.label = this.name;
        this.user = conn.user ?? "root";
        this.sudo = this.user !== "root";
        this.interpreter = new Interpreter(() => this.startInterpreter());
    }

    private hold(delta: number): void {
        this.holds = Math.max(0, this.holds + delta);
        if (this.holds > 0) this.socket?.ref();
        else this.socket?.unref();
    }

    get roundTrips(): number {
        return this.interpreter.roundTrips;
    }

    /**
     * The ssh2 config for one dial: ssh_config resolved, the host key check, and the authentications to try.
     * @throws ConnectionError for what no retry can fix (a public key given as the private key, an unreadable
     * known_hosts or ssh_config file, a bad value in one).
     */
    private plan(): DialPlan {
        const c = this.conn;
        let settings: SshSettings;
        try {
            settings = resolveSsh(c, this.env);
        } catch (e) {
            throw new ConnectionError(`cannot connect to ${this.name} over SSH: ${(e as Error).message}`);
        }
        this.user = settings.user;
        this.sudo = settings.user !== "root";
        const resolved = `${settings.user}@${settings.hostName}:${settings.port}`;
        this.label = resolved === this.name ? this.name : `${resolved} (${c.host} in ssh_config)`;
        const fail = (why: string) => new ConnectionError(`cannot connect to ${this.label} over SSH: ${why}`);
        const perDial = c.perDialTimeout ?? 15;
        const config: ConnectConfig = {
            host: settings.hostName,
            port: settings.port,
            username: settings.user,
            readyTimeout: perDial === 0 ? 2 ** 31 - 1 : perDial * 1000,
        };
        const tried: string[] = [];
        const notes: string[] = [];
        const auths: AnyAuthMethod[] = [];
        let noCredentials: string | undefined;
        const username = settings.user;
        if (c.privateKey) {
            const problem = privateKeyProblem(c.privateKey, c.privateKeyPassword || undefined);
            if (problem) throw fail(`connection.privateKey: ${keyProblemMessage(problem)}`);
            auths.push({ type: "publickey" as const, username, key: c.privateKey, ...(c.privateKeyPassword ? { passphrase: c.privateKeyPassword } : {}) });
            tried.push("connection.privateKey");
        } else if (c.password) {
            auths.push({ type: "password" as const, username, password: c.password });
            tried.push("connection.password");
        } else {
            // As ssh(1): the agent's keys, then the identity files (ssh_config's, else the defaults that exist).
            if (settings.agent) {
                auths.push({ type: "agent" as const, username, agent: settings.agent });
                tried.push(`the ssh-agent at ${settings.agent}`);
            }
            for (const file of settings.identityFiles) {
                const shown = displayPath(file, this.env);
                let text: string;
                try {
                    text = fs.readFileSync(file, "utf8");
                } catch (e) {
                    if (settings.identityFilesFromConfig) notes.push(`IdentityFile ${shown} cannot be read (${(e as NodeJS.ErrnoException).code ?? "error"})`);
                    continue;
                }
                const problem = privateKeyProblem(text);
                if (problem) {
                    notes.push(`skipped ${shown}: ${problem === "encrypted" ? "it is encrypted (add it to ssh-agent: ssh-add " + shown + ")" : keyProblemMessage(problem)}`);
                    continue;
                }
                auths.push({ type: "publickey" as const, username, key: text });
                tried.push(shown);
            }
            if (!auths.length) {
                // Said after the dial, as ssh does: an unreachable host or an unknown host key comes first.
                const looked = settings.identityFilesFromConfig ? "the IdentityFile of ssh_config" : settings.identityFiles.map((f) => displayPath(f, this.env)).join(", ");
                noCredentials = `no SSH credentials: no connection.privateKey or password, no ssh-agent (SSH_AUTH_SOCK is not set), and no usable key in ${looked}${notes.length ? ` (${notes.join("; ")})` : ""}. Give a key (connection.privateKey, or -i KEYFILE), or start an ssh-agent with the key added`;
            }
        }
        config.authHandler = auths;
        this.hostKeyCheck(config, settings);
        return { config, settings, tried, notes, noCredentials };
    }

    /** The host key verifier: the explicit `hostKey`, else known_hosts, else (by name only) nothing. */
    private hostKeyCheck(config: ConnectConfig, settings: SshSettings): void {
        const c = this.conn;
        const fail = (why: string) => new ConnectionError(`cannot connect to ${this.label} over SSH: ${why}`);
        if (c.hostKeyCheck !== undefined && c.hostKeyCheck !== "known-hosts" && c.hostKeyCheck !== "insecure-skip") {
            throw fail(`connection.hostKeyCheck ${JSON.stringify(c.hostKeyCheck)} is not one of "known-hosts", "insecure-skip"`);
        }
        if (c.hostKey) {
            if (c.hostKeyCheck === "insecure-skip") throw fail(`connection.hostKey and hostKeyCheck "insecure-skip" contradict each other: drop one`);
            const expected = c.hostKey;
            const type = hostKeyType(expected);
            const algorithms = type ? hostKeyAlgorithms([type]) : undefined;
            if (algorithms) config.algorithms = { serverHostKey: algorithms as NonNullable<ConnectConfig["algorithms"]>["serverHostKey"] };
            config.hostVerifier = (key: Buffer) => {
                if (hostKeyMatches(expected, key)) return true;
                this.hostKeyRefusal = fail(`the host key does not match connection.hostKey: the server offered ${blobKeyType(key)} ${fingerprint(key)}. If the host was reinstalled, check that fingerprint on its console and update connection.hostKey`);
                return false;
            };
            return;
        }
        if (c.hostKeyCheck === "insecure-skip") return;
        const name = knownHostsName(settings.hostKeyName, settings.port);
        const files = [...settings.userKnownHostsFiles, ...settings.globalKnownHostsFiles];
        let lines;
        try {
            lines = readKnownHosts(files);
        } catch (e) {
            throw fail((e as Error).message);
        }
        const algorithms = hostKeyAlgorithms(knownKeyTypes(lines, name));
        if (algorithms) config.algorithms = { serverHostKey: algorithms as NonNullable<ConnectConfig["algorithms"]>["serverHostKey"] };
        const shownFiles = files.map((f) => displayPath(f, this.env)).join(", ");
        const scan = `ssh-keyscan -p ${settings.port} ${settings.hostKeyName} >> ${displayPath(settings.userKnownHostsFiles[0] ?? "~/.ssh/known_hosts", this.env)}`;
        const fixFor = (type: string, removeOld?: string) =>
            `check that fingerprint on the host's console (\`ssh-keygen -lf /etc/ssh/ssh_host_${hostKeyFileType(type)}_key.pub\`), then ${removeOld ? `remove the old entry (\`ssh-keygen -R ${removeOld.includes("[") ? `'${removeOld}'` : removeOld}\`) and ` : ""}run \`${scan}\` (or \`ssh -p ${settings.port} ${settings.user}@${c.host}\` once and accept the key), or set connection.hostKey`;
        config.hostVerifier = (key: Buffer) => {
            const type = blobKeyType(key);
            const fp = fingerprint(key);
            const verdict = judgeHostKey(lines, name, key);
            switch (verdict.kind) {
                case "known":
                    return true;
                case "revoked":
                    this.hostKeyRefusal = fail(`the host key of ${name} (${type} ${fp}) is marked @revoked in ${displayPath(verdict.where, this.env)}: refusing it`);
                    return false;
                case "changed": {
                    const old = verdict.known.map((k) => `${k.keyType} ${k.fingerprint} (${displayPath(k.where, this.env)})`).join(", ");
                    this.hostKeyRefusal = fail(
                        `the host key of ${name} has CHANGED: the server offered ${type} ${fp}, known_hosts has ${old}. Someone may be intercepting the connection (man-in-the-middle), or the host was reinstalled: ${fixFor(type, name)}`,
                    );
                    return false;
                }
                case "unknown":
                    if (settings.strict === "accept-new" && settings.userKnownHostsFiles[0]) {
                        try {
                            appendKnownHost(settings.userKnownHostsFiles[0], name, key, settings.hashKnownHosts);
                            return true;
                        } catch (e) {
                            this.hostKeyRefusal = fail(`cannot record the new host key of ${name} (StrictHostKeyChecking accept-new) in ${displayPath(settings.userKnownHostsFiles[0], this.env)} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
                            return false;
                        }
                    }
                    this.hostKeyRefusal = fail(
                        `the host key of ${name} is not known: the server offered ${type} ${fp}, and no line of ${shownFiles} lists it${verdict.certAuthorities.length ? ` (@cert-authority lines match, but host certificates are not supported)` : ""}. To trust it, ${fixFor(type)}`,
                    );
                    return false;
            }
        };
    }

    /** Why the last host key check refused the server, set by the verifier. */
    private hostKeyRefusal?: ConnectionError;

    private dialOnce(plan: DialPlan): Promise<Client> {
        return new Promise((resolve, reject) => {
            const client = new Client();
            // Our own socket, so an idle connection can be unreferenced; TCP keepalive finds a dead peer.
            const sock = net.connect({ host: plan.settings.hostName, port: plan.settings.port });
            sock.setKeepAlive(true, 10_000);
            sock.setNoDelay(true);
            let settled = false;
            const fail = (e: Error) => {
                if (settled) return;
                settled = true;
                client.end();
                sock.destroy();
                reject(e);
            };
            // Listeners for the client's whole life, never `once`: ssh2 may emit 'error' more than once (a protocol
            // or host key error, then the socket's reset while it ends), and an 'error' without a listener is thrown
            // as an uncaught exception. The socket gets its own too: before `connect` attaches ssh2's (or when
            // `connect` throws) nothing else listens to it.
            client.on("error", fail);
            sock.on("error", (e) => fail(e));
            // A server that closes after its banner ends the socket without any 'error'.
            client.on("close", () => fail(new Error("the server closed the connection before login completed")));
            client.once("ready", () => {
                if (settled) return;
                settled = true;
                this.socket = sock;
                this.hold(0);
                resolve(client);
            });
            try {
                client.connect({ ...plan.config, sock });
            } catch (e) {
                fail(e as Error);
            }
        });
    }

    private connect(): Promise<Client> {
        if (this.client) return Promise.resolve(this.client);
        if (!this.connecting) {
            this.connecting = (async () => {
                try {
                    const plan = this.plan();
                    const limit = this.conn.dialErrorLimit ?? 10;
                    let last: Error | undefined;
                    for (let attempt = 1; limit < 0 || attempt <= limit; attempt++) {
                        this.hostKeyRefusal = undefined;
                        try {
                            const c = await this.dialOnce(plan);
                            c.on("close", () => {
                                if (this.client === c) this.client = undefined;
                                this.connecting = undefined;
                            });
                            this.client = c;
                            return c;
                        } catch (e) {
                            if (this.hostKeyRefusal) throw this.hostKeyRefusal;
                            last = e as Error;
                            const msg = last.message ?? "";
                            // Authentication, key and host-key failures will not heal by retrying.
                            if (/authentication|host key|handshake failed|verification|privateKey|passphrase|parse/i.test(msg)) break;
                            if (limit < 0 || attempt < limit) await sleep(Math.min(250 * 2 ** (attempt - 1), 3000));
                        }
                    }
                    let reason = (last?.message ?? "unknown error").replace(/\s+/g, " ");
                    if (/all configured authentication methods failed/i.test(reason) && plan.noCredentials) {
                        throw new ConnectionError(`cannot connect to ${this.label} over SSH: ${plan.noCredentials}`);
                    }
                    if (/all configured authentication methods failed/i.test(reason)) {
                        reason = `authentication failed as ${plan.settings.user} (tried ${plan.tried.join(", ")}${plan.notes.length ? `; ${plan.notes.join("; ")}` : ""})`;
                    }
                    throw new ConnectionError(`cannot connect to ${this.label} over SSH: ${reason}. Check connection.host/port/user and the key or password`);
                } finally {
                    if (!this.client) this.connecting = undefined;
                }
            })();
        }
        return this.connecting;
    }

    private async exec(argv: string[]): Promise<ClientChannel> {
        const client = await this.connect();
        const cmd = quoteArgv(this.sudo ? ["sudo", "-n", "--", ...argv] : argv);
        return new Promise((resolve, reject) => client.exec(cmd, (err, ch) => (err ? reject(new ConnectionError(`${this.name}: ${err.message}`)) : resolve(ch))));
    }

    /** The interpreter: one exec channel, kept open; closing its stdin (or the connection) ends it. */
    private async startInterpreter(): Promise<InterpreterProcess> {
        const ch = await this.exec([...BATCH_ARGV]);
        let err = "";
        let answered = false;
        ch.stderr.on("data", (d: Buffer) => (err += d.toString()));
        ch.on("data", () => (answered = true));
        // A write to a channel the server already closed: its close event reports the end.
        ch.on("error", () => undefined);
        let exitCode: number | undefined;
        ch.on("exit", (code: number) => (exitCode = code));
        return {
            write: (input) => ch.write(input),
            onData: (cb) => ch.on("data", cb),
            onExit: (cb) =>
                ch.on("close", () => {
                    // sudo -n refusing us ends the channel before the interpreter said anything.
                    if (this.sudo && !answered && SUDO_REFUSED.test(err)) {
                        this.sudoRefused = new ConnectionError(
                            `${this.label}: root or passwordless sudo is needed: log in as root or allow NOPASSWD for ${this.user} (a sudoers rule such as \`${this.user} ALL=(root) NOPASSWD: ALL\`); sudo said: ${err.trim().split("\n")[0]}`,
                        );
                        return cb(this.sudoRefused);
                    }
                    cb(new Error(`${this.name}: the batch interpreter exited${exitCode !== undefined ? ` with status ${exitCode}` : ""}: ${err.trim() || "the channel closed"}`));
                }),
            abandon: () => {
                ch.removeAllListeners("close");
                try {
                    ch.signal("KILL");
                } catch {
                    /* not supported by every server */
                }
                ch.close();
            },
            end: () => ch.end(),
            stderr: () => err,
            // The host holds the connection for the whole of each run (see `held`), channel opening included.
            keepAlive: () => undefined,
        };
    }

    /** Keep Node alive while `fn` runs: connecting, opening channels and waiting for answers all count. */
    private async held<T>(fn: () => Promise<T>): Promise<T> {
        this.hold(1);
        try {
            return await fn();
        } finally {
            this.hold(-1);
        }
    }

    /** A failure after sudo refused us is that refusal (the interpreter only says it exited). */
    private privileged<T>(p: Promise<T>): Promise<T> {
        return p.catch((e) => {
            throw this.sudoRefused ?? e;
        });
    }

    async run(ops: Op[], opts: RunOptions = {}): Promise<OpResult[]> {
        if (ops.length === 0) return [];
        return this.held(() => this.privileged(this.interpreter.run(ops, opts)));
    }

    withLock<T>(fn: (locked: Host) => Promise<T>, timeoutMs = LOCK_TIMEOUT_MS): Promise<T> {
        return this.held(() => this.privileged(this.interpreter.withLock(this, fn, timeoutMs)));
    }

    /**
     * OpenSSH's `direct-streamlocal@openssh.com` channel on the same connection (sshd connects to the socket as the
     * logged-in user, so a root-owned 0600 QMP socket needs `user: root`; sshd's AllowStreamLocalForwarding must
     * not be `no`). The error keeps the socket's errno-like code (ENOENT/ECONNREFUSED) when sshd says which.
     */
    async openUnixSocket(path: string): Promise<Duplex> {
        assertSafePath(path);
        return this.held(() => this.forwardStreamLocal(path));
    }

    private async forwardStreamLocal(path: string): Promise<Duplex> {
        const client = await this.connect();
        return new Promise((resolve, reject) =>
            client.openssh_forwardOutStreamLocal(path, (err, ch) => {
                if (!err) {
                    // An open QMP stream keeps Node alive until it is closed, like a local socket would.
                    this.hold(1);
                    ch.once("close", () => this.hold(-1));
                    return resolve(ch);
                }
                const text = err.message ?? String(err);
                const code = /no such file|not found/i.test(text) ? "ENOENT" : /refused/i.test(text) ? "ECONNREFUSED" : /denied|prohibited/i.test(text) ? "EACCES" : undefined;
                reject(Object.assign(new Error(`${this.name}: cannot connect to ${path}: ${text}${code === "EACCES" ? " (QMP sockets are root-owned 0600: connect as root, and allow stream-local forwarding in sshd)" : ""}`), { code }));
            }),
        );
    }

    async close(): Promise<void> {
        await this.interpreter.close();
        const c = this.client;
        this.client = undefined;
        this.connecting = undefined;
        this.socket = undefined;
        this.holds = 0;
        c?.end();
    }
}

/**
 * A machine over SSH as a {@link Host}, with the `ssh2` library. One connection per host object, and on it one exec
 * channel running the same constant interpreter as the local host (argv quoted word by word, never a shell string
 * built from input) for every batch, so a batch costs one network round trip and no new process. While idle the
 * connection does not keep Node alive (its socket is unreferenced; TCP keepalive instead of an SSH-level timer).
 */
import { createHash } from "crypto";
import * as net from "net";
import { Duplex } from "stream";
import { Client, ClientChannel, ConnectConfig } from "ssh2";
import { BATCH_ARGV, Interpreter, InterpreterProcess, quoteArgv } from "./batch";
import { LOCK_TIMEOUT_MS } from "./lock";
import { Host, Op, OpResult, RunOptions, assertSafePath } from "./types";

/**
 * How to reach a host over SSH. The same shape as @pulumi/command's `remote.ConnectionArgs`.
 */
export interface Connection {
    /** Host name or address. */
    host: string;
    /** TCP port. Default 22. */
    port?: number;
    /** User name. Default `root`; any other user needs passwordless `sudo`. */
    user?: string;
    /** Password (used when no key is given). Secret. */
    password?: string;
    /** Private key text (OpenSSH or PEM). Takes precedence over the password. Secret. */
    privateKey?: string;
    /** Passphrase of an encrypted private key. Secret. */
    privateKeyPassword?: string;
    /** ssh-agent socket. Default: `SSH_AUTH_SOCK` when set. */
    agentSocketPath?: string;
    /** Expected host key, as in known_hosts/authorized_keys (`ssh-ed25519 AAAA...`) or a `SHA256:...` fingerprint.
     *  When given, a different key fails the connection; when absent, the key is not checked. */
    hostKey?: string;
    /** Seconds for each dial attempt. Default 15; 0 means no limit. */
    perDialTimeout?: number;
    /** Dial attempts before giving up. Default 10; -1 means unlimited. */
    dialErrorLimit?: number;
}

/** Thrown when the host cannot be reached or refuses us; never contains key material or passwords. */
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
    if (e.startsWith("SHA256:")) {
        const fp = createHash("sha256").update(key).digest("base64").replace(/=+$/, "");
        return e.slice("SHA256:".length).replace(/=+$/, "") === fp;
    }
    const parts = e.split(/\s+/);
    const blob = parts.length >= 2 ? parts[1] : parts[0];
    return Buffer.from(blob, "base64").equals(key);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class SshHost implements Host {
    readonly name: string;
    private client?: Client;
    private connecting?: Promise<Client>;
    private readonly sudo: boolean;
    private readonly interpreter: Interpreter;
    /** The TCP socket under the current client, and how many users (a running batch, an open QMP stream) need it
     *  to keep Node alive. */
    private socket?: net.Socket;
    private holds = 0;

    constructor(private readonly conn: Connection) {
        this.name = connectionLabel(conn);
        this.sudo = (conn.user ?? "root") !== "root";
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

    private config(): ConnectConfig {
        const c = this.conn;
        const cfg: ConnectConfig = {
            host: c.host,
            port: c.port ?? 22,
            username: c.user ?? "root",
            readyTimeout: (c.perDialTimeout ?? 15) === 0 ? 2 ** 31 - 1 : (c.perDialTimeout ?? 15) * 1000,
        };
        if (c.privateKey) {
            cfg.privateKey = c.privateKey;
            if (c.privateKeyPassword) cfg.passphrase = c.privateKeyPassword;
        } else if (c.password) {
            cfg.password = c.password;
        }
        const agent = c.agentSocketPath ?? process.env.SSH_AUTH_SOCK;
        if (agent && !c.privateKey && !c.password) cfg.agent = agent;
        if (c.hostKey) {
            const expected = c.hostKey;
            cfg.hostVerifier = (key: Buffer) => hostKeyMatches(expected, key);
        }
        return cfg;
    }

    private dialOnce(): Promise<Client> {
        return new Promise((resolve, reject) => {
            const client = new Client();
            // Our own socket, so an idle connection can be unreferenced; TCP keepalive finds a dead peer.
            const sock = net.connect({ host: this.conn.host, port: this.conn.port ?? 22 });
            sock.setKeepAlive(true, 10_000);
            sock.setNoDelay(true);
            let settled = false;
            client.once("ready", () => {
                settled = true;
                this.socket = sock;
                this.hold(0);
                resolve(client);
            });
            client.once("error", (e: Error & { level?: string }) => {
                if (settled) return;
                settled = true;
                client.end();
                reject(e);
            });
            try {
                client.connect({ ...this.config(), sock });
            } catch (e) {
                reject(e);
            }
        });
    }

    private connect(): Promise<Client> {
        if (this.client) return Promise.resolve(this.client);
        if (!this.connecting) {
            this.connecting = (async () => {
                const limit = this.conn.dialErrorLimit ?? 10;
                let last: Error | undefined;
                for (let attempt = 1; limit < 0 || attempt <= limit; attempt++) {
                    try {
                        const c = await this.dialOnce();
                        c.on("close", () => {
                            if (this.client === c) this.client = undefined;
                            this.connecting = undefined;
                        });
                        c.on("error", () => undefined);
                        this.client = c;
                        return c;
                    } catch (e) {
                        last = e as Error;
                        const msg = last.message ?? "";
                        // Authentication, key and host-key failures will not heal by retrying.
                        if (/authentication|host key|handshake failed|verification|privateKey|passphrase|parse/i.test(msg)) break;
                        if (limit < 0 || attempt < limit) await sleep(Math.min(250 * 2 ** (attempt - 1), 3000));
                    }
                }
                this.connecting = undefined;
                const reason = (last?.message ?? "unknown error").replace(/\s+/g, " ");
                const why = /host key|verification/i.test(reason) ? `the host key does not match connection.hostKey (${reason})` : reason;
                throw new ConnectionError(`cannot connect to ${this.name} over SSH: ${why}. Check connection.host/port/user and the key or password`);
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
        ch.stderr.on("data", (d: Buffer) => (err += d.toString()));
        // A write to a channel the server already closed: its close event reports the end.
        ch.on("error", () => undefined);
        let exitCode: number | undefined;
        ch.on("exit", (code: number) => (exitCode = code));
        return {
            write: (input) => ch.write(input),
            onData: (cb) => ch.on("data", cb),
            onExit: (cb) =>
                ch.on("close", () => {
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

    async run(ops: Op[], opts: RunOptions = {}): Promise<OpResult[]> {
        if (ops.length === 0) return [];
        return this.held(() => this.interpreter.run(ops, opts));
    }

    withLock<T>(fn: (locked: Host) => Promise<T>, timeoutMs = LOCK_TIMEOUT_MS): Promise<T> {
        return this.held(() => this.interpreter.withLock(this, fn, timeoutMs));
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

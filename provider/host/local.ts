/**
 * The local machine as a {@link Host}: one bash interpreter process (through `sudo -n` when we are not root) runs
 * every batch of this host object, in its own process group so a write stuck in the kernel can be abandoned
 * without taking us with it. While idle it does not keep Node alive; when Node exits, its stdin closes and it ends.
 */
import { spawn } from "child_process";
import * as net from "net";
import { Duplex } from "stream";
import { BATCH_ARGV, Interpreter, InterpreterProcess } from "./batch";
import { LOCK_TIMEOUT_MS } from "./lock";
import { Host, Op, OpResult, RunOptions, assertSafePath } from "./types";

export interface LocalHostOptions {
    /** Prefix privileged work with `sudo -n` (default: when not running as root). */
    sudo?: boolean;
    /** Environment of the interpreter, `PATH` included (default: this process's). */
    env?: NodeJS.ProcessEnv;
}

export class LocalHost implements Host {
    readonly name = "local";
    private readonly prefix: string[];
    private readonly env?: NodeJS.ProcessEnv;
    private readonly interpreter: Interpreter;

    constructor(opts: LocalHostOptions = {}) {
        const sudo = opts.sudo ?? (typeof process.getuid === "function" && process.getuid() !== 0);
        this.prefix = sudo ? ["sudo", "-n", "--"] : [];
        this.env = opts.env;
        this.interpreter = new Interpreter(async () => this.start());
    }

    get roundTrips(): number {
        return this.interpreter.roundTrips;
    }

    private start(): InterpreterProcess {
        const [cmd, ...args] = [...this.prefix, ...BATCH_ARGV];
        const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"], detached: true, env: this.env ?? process.env });
        let err = "";
        child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
        child.stdin!.on("error", () => undefined);
        // A failed spawn (no bash, no sudo) must surface as an error, not an unhandled event.
        const spawnError: Error[] = [];
        child.on("error", (e) => spawnError.push(e));
        const handles = [child.stdin, child.stdout, child.stderr] as unknown as net.Socket[];
        return {
            write: (input) => child.stdin!.write(input),
            onData: (cb) => child.stdout!.on("data", cb),
            onExit: (cb) =>
                child.on("close", (code) => {
                    if (spawnError.length) return cb(new Error(`cannot start ${cmd}: ${spawnError[0].message}`));
                    cb(new Error(`${cmd} exited${code !== null ? ` with status ${code}` : ""}: ${err.trim() || "no message"}`));
                }),
            abandon: () => {
                try {
                    if (child.pid) process.kill(-child.pid, "SIGKILL");
                } catch {
                    /* already gone */
                }
                child.removeAllListeners("close");
                child.stdout!.destroy();
                child.stderr!.destroy();
                child.stdin!.destroy();
                child.unref();
            },
            end: () => child.stdin!.end(),
            stderr: () => err,
            keepAlive: (active) => {
                for (const h of handles) (active ? h.ref : h.unref)?.call(h);
                if (active) child.ref();
                else child.unref();
            },
        };
    }

    run(ops: Op[], opts: RunOptions = {}): Promise<OpResult[]> {
        if (ops.length === 0) return Promise.resolve([]);
        return this.interpreter.run(ops, opts);
    }

    withLock<T>(fn: (locked: Host) => Promise<T>, timeoutMs = LOCK_TIMEOUT_MS): Promise<T> {
        return this.interpreter.withLock(this, fn, timeoutMs);
    }

    /**
     * Connects as this process's user, not through sudo: a root-owned 0600 socket (QEMU's QMP socket as
     * pulumi-vfio creates it) needs pulumi to run as root, the same as the sysfs writes without sudo.
     */
    openUnixSocket(path: string): Promise<Duplex> {
        assertSafePath(path);
        return new Promise((resolve, reject) => {
            const sock = net.connect(path);
            sock.once("connect", () => {
                sock.removeAllListeners("error");
                resolve(sock);
            });
            sock.once("error", (e: NodeJS.ErrnoException) => {
                const why = e.code === "EACCES" ? `: permission denied; the socket is root-owned mode 0600, so run pulumi as root` : `: ${e.code ?? e.message}`;
                reject(Object.assign(new Error(`cannot connect to ${path}${why}`), { code: e.code }));
            });
        });
    }

    close(): Promise<void> {
        return this.interpreter.close();
    }
}

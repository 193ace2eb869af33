/**
 * The local machine as a {@link Host}: each batch is one bash process (through `sudo -n` when we are not root),
 * started in its own process group so a write stuck in the kernel can be abandoned without taking us with it.
 */
import { ChildProcess, spawn } from "child_process";
import * as net from "net";
import { Duplex } from "stream";
import { BATCH_SCRIPT, BatchProcess, driveBatch, newBoundary } from "./batch";
import { LOCK_SCRIPT, LOCK_TIMEOUT_MS } from "./lock";
import { Host, Op, OpResult, RunOptions, assertSafePath } from "./types";

export interface LocalHostOptions {
    /** Prefix privileged work with `sudo -n` (default: when not running as root). */
    sudo?: boolean;
}

export class LocalHost implements Host {
    readonly name = "local";
    private trips = 0;
    private readonly prefix: string[];

    constructor(opts: LocalHostOptions = {}) {
        const sudo = opts.sudo ?? (typeof process.getuid === "function" && process.getuid() !== 0);
        this.prefix = sudo ? ["sudo", "-n", "--"] : [];
    }

    get roundTrips(): number {
        return this.trips;
    }

    private start(argv: string[]): { child: ChildProcess; proc: BatchProcess } {
        const [cmd, ...args] = [...this.prefix, ...argv];
        const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"], detached: true });
        let err = "";
        child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
        // A failed spawn (no bash, no sudo) must surface as an error, not an unhandled event.
        const spawnError: Error[] = [];
        child.on("error", (e) => spawnError.push(e));
        const proc: BatchProcess = {
            write: (input) => {
                child.stdin!.on("error", () => undefined);
                child.stdin!.end(input);
            },
            onData: (cb) => child.stdout!.on("data", cb),
            onExit: (cb) =>
                child.on("close", (code) => {
                    if (spawnError.length) return cb(new Error(`cannot start ${cmd}: ${spawnError[0].message}`));
                    if (code !== 0 && code !== null) return cb(new Error(`${cmd} exited with status ${code}: ${err.trim()}`));
                    cb();
                }),
            abandon: () => {
                try {
                    if (child.pid) process.kill(-child.pid, "SIGKILL");
                } catch {
                    /* already gone */
                }
                child.stdout!.destroy();
                child.stderr!.destroy();
                child.unref();
            },
            stderr: () => err,
        };
        return { child, proc };
    }

    run(ops: Op[], opts: RunOptions = {}): Promise<OpResult[]> {
        if (ops.length === 0) return Promise.resolve([]);
        this.trips++;
        const boundary = newBoundary();
        const { proc } = this.start(["bash", "-c", BATCH_SCRIPT, "pulumi-vfio-batch", boundary, opts.stopOnError ? "1" : "0"]);
        return driveBatch(proc, boundary, ops, opts);
    }

    async withLock<T>(fn: () => Promise<T>, timeoutMs = LOCK_TIMEOUT_MS): Promise<T> {
        this.trips++;
        const { child } = this.start(["bash", "-c", LOCK_SCRIPT, "pulumi-vfio-lock", String(Math.ceil(timeoutMs / 1000))]);
        await new Promise<void>((resolve, reject) => {
            let out = "";
            let err = "";
            child.stdout!.on("data", (d: Buffer) => {
                out += d.toString();
                if (out.includes("locked")) resolve();
            });
            child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
            child.on("error", reject);
            child.on("close", (code) => reject(new Error(`could not take the host lock /run/lock/pulumi-vfio.lock (status ${code}): ${err.trim() || "another pulumi-vfio operation holds it"}`)));
        });
        try {
            return await fn();
        } finally {
            child.removeAllListeners("close");
            child.stdin!.end();
        }
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

    async close(): Promise<void> {
        /* nothing held between batches */
    }
}

/**
 * The TypeScript end of the batch interpreter shared by the local and the SSH host: `batch.sh` is the constant bash
 * program (its header describes the protocol and why it is written as it is); this file encodes operations for it,
 * drives one long-lived process of it and parses its answers. Nothing from user input ever becomes shell text:
 * every field travels on stdin as data.
 */
import { randomBytes } from "crypto";
import * as fs from "fs";
import * as path from "path";
import { StringDecoder } from "string_decoder";
import { LOCK_PATH, lockedHost } from "./lock";
import { Host, Op, OpResult, RunOptions, assertSafePath, defaultTimeout, errnoFromMessage, isGuardRead, isMutation } from "./types";

/** The interpreter's source, shipped next to this file (the build copies it into `dist/`). */
export const BATCH_SCRIPT = fs.readFileSync(path.join(__dirname, "batch.sh"), "utf8");

/** How the hosts start the interpreter: the script as bash's `-c` argument (over SSH too), the lock file as `$1`. */
export const BATCH_ARGV: readonly string[] = ["bash", "-c", BATCH_SCRIPT, "pulumi-vfio-batch", LOCK_PATH];

/** Each operation's word in the protocol. */
const OP_WORD: Record<Op["op"], string> = {
    read: "read",
    readlink: "readlink",
    list: "list",
    stat: "stat",
    write: "write",
    put: "put",
    mkdir: "mkdir",
    remove: "remove",
    openers: "openers",
    groupHolders: "group-holders",
    exec: "exec",
};

/** Every byte outside a small safe set becomes `\xHH`, so a field never contains a space, newline or backslash. */
export function encodeField(value: string): string {
    let out = "";
    for (const byte of Buffer.from(value, "utf8")) {
        const c = String.fromCharCode(byte);
        out += /[A-Za-z0-9_.:\/@+,=-]/.test(c) ? c : "\\x" + byte.toString(16).padStart(2, "0");
    }
    return out;
}

function field(value: string): string {
    // An empty field would collapse in `read -a`; `\c` is printf %b's "produce no further output".
    return value === "" ? "\\c" : encodeField(value);
}

/** The stdin line for one operation. */
export function encodeOp(op: Op): string {
    if (op.op === "put" && op.inPlace && op.optional) throw new Error(`put ${op.path}: inPlace and optional cannot be combined`);
    const flag = "optional" in op && op.optional ? "optional" : op.op === "groupHolders" && op.guard ? "guard" : isGuardRead(op) ? "expect" : op.op === "put" && op.inPlace ? "inplace" : "-";
    const word = OP_WORD[op.op];
    if (op.op === "exec") {
        if (op.argv.length === 0) throw new Error("exec needs a program");
        return [word, flag, "-", ...op.argv.map(field)].join(" ");
    }
    assertSafePath(op.path);
    const parts = [word, flag, field(op.path)];
    if (op.op === "write") parts.push(field(op.data));
    if (op.op === "put") parts.push(field(op.mode.toString(8)), field(op.data));
    if (op.op === "mkdir") parts.push(field(op.mode.toString(8)));
    if (isGuardRead(op)) parts.push(field(op.expect));
    return parts.join(" ");
}

/** One running interpreter process, as the local or SSH host started it. */
export interface InterpreterProcess {
    /** Append to the interpreter's stdin. */
    write(input: string): void;
    onData(cb: (chunk: Buffer) => void): void;
    /** Called once when the process has gone (with an error when it did not end normally). */
    onExit(cb: (err?: Error) => void): void;
    /** Kill it and stop listening; a write stuck in the kernel stays stuck, abandoned. */
    abandon(): void;
    /** Close stdin: the interpreter exits after its current operation. */
    end(): void;
    /** Whatever the process wrote on stderr, for errors. */
    stderr(): string;
    /** Whether this process may keep Node's event loop alive: true while a batch runs, false while idle, so a
     *  program whose work is done exits even though its hosts are still open. */
    keepAlive(active: boolean): void;
}

export function newBoundary(): string {
    return randomBytes(16).toString("hex");
}

/** A batch as sent: its ops (for results, time limits and messages) and the stdin lines that encode them. The lock
 *  lines `lock`/`unlock` are the interpreter's own and have no {@link Op}; a stand-in op carries their limit. */
type Line = { ops: Op[]; lines: string[] };

/**
 * Drives one long-lived interpreter process: batches are queued and run one at a time over the same process, which
 * is started on first use and again after it was abandoned (an operation over its time limit) or went away. The
 * host-wide lock is held by the interpreter (flock on its fd 9); a locked section (see {@link withLock}) takes it with
 * its first batch, in the same round trip. When a new process has to be started while the lock is held, it tries
 * once to take it again (a process abandoned in the middle of a kernel write may still hold it, which is as good).
 */
export class Interpreter {
    private proc?: InterpreterProcess;
    private starting?: Promise<InterpreterProcess>;
    private tail: Promise<unknown> = Promise.resolve();
    /** Whether the current process holds the flock. */
    private held = false;
    /** Whether a locked section runs, and the lock's time limit while it has not taken it yet. */
    private section = false;
    private pendingLock?: number;
    /** Drops a lock nobody uses any more; see {@link LOCK_LINGER_MS}. */
    private linger?: NodeJS.Timeout;
    /** In-process mutual exclusion for {@link withLock}: flock does not exclude a second holder of the same fd. */
    private mutex: Promise<void> = Promise.resolve();
    /** Called for every data chunk and for the process's exit, by whichever batch is running. */
    private sink?: { data(text: string): void; exit(err?: Error): void };

    /** Batches exchanged so far, the lock's included (dropping it is a line without an answer). */
    roundTrips = 0;

    constructor(private readonly spawn: () => Promise<InterpreterProcess>) {}

    /** Run a batch of operations without the lock (queued behind any batch already running). */
    run(ops: Op[], opts: RunOptions = {}): Promise<OpResult[]> {
        if (ops.length === 0) return Promise.resolve([]);
        return this.enqueue(() => this.drive({ ops, lines: ops.map(encodeOp) }, opts));
    }

    /**
     * Run a batch of the locked section. Its first batch that does not hold the lock yet takes it in the same round
     * trip: `lock` goes first, and when it fails the interpreter skips the rest and this throws the lock's error.
     */
    private runLocked(ops: Op[], opts: RunOptions = {}): Promise<OpResult[]> {
        const lockMs = this.pendingLock;
        if (ops.length === 0 || lockMs === undefined) return this.run(ops, opts);
        this.pendingLock = undefined;
        const secs = Math.max(1, Math.ceil(lockMs / 1000));
        const locked: Line = { ops: [lockOp(lockMs + 10_000), ...ops], lines: [`lock ${secs}`, ...ops.map(encodeOp)] };
        return this.enqueue(async () => {
            const [r, ...rest] = await this.drive(locked, opts).catch((e) => {
                this.pendingLock = lockMs;
                throw e;
            });
            if (!r.ok) {
                // Nothing ran; the section's next batch tries again.
                this.pendingLock = lockMs;
                throw new Error(`could not take the host lock ${LOCK_PATH}: ${r.message ?? "the interpreter went away"}`);
            }
            this.held = true;
            return rest;
        });
    }

    /** Drop the lock: one line, queued behind the batches before it, answered by nothing (so it costs no round
     *  trip). Never fails: a process that went away released the lock with its file descriptor. */
    private unlock(): Promise<void> {
        if (!this.held) return Promise.resolve();
        this.held = false;
        return this.enqueue(async () => this.proc?.write("unlock\n")).catch(() => undefined);
    }

    /**
     * Run `fn` holding the host-wide lock: first against other work of this program on the same interpreter, then
     * against every other process (flock). `fn` gets a view of `base` whose batches are the section's (see
     * {@link lockedHost}); the lock is taken with the first of them. Throws when the lock is not free within
     * `timeoutMs`.
     */
    async withLock<T>(base: Host, fn: (locked: Host) => Promise<T>, timeoutMs: number): Promise<T> {
        const prev = this.mutex;
        let release!: () => void;
        const mine = new Promise<void>((r) => (release = r));
        // The next waiter waits for the previous holder too, even if we give up waiting for it.
        this.mutex = prev.then(() => mine);
        try {
            let timer: NodeJS.Timeout | undefined;
            const waited = await Promise.race([prev.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)))]);
            clearTimeout(timer);
            if (!waited) throw new Error(`could not take the host lock ${LOCK_PATH}: another operation of this program held it for ${timeoutMs} ms`);
            if (this.linger) clearTimeout(this.linger);
            this.linger = undefined;
            // `held` may describe a process that has gone since; a fresh one waits for the lock like anyone else.
            if (!this.proc) this.held = false;
            // Taken by the section's first batch, in its round trip (see `runLocked`).
            this.pendingLock = this.held ? undefined : timeoutMs;
            this.section = true;
            const view = lockedHost(base, (ops, opts) => this.runLocked(ops, opts));
            try {
                return await fn(view.host);
            } finally {
                view.end();
                this.pendingLock = undefined;
                this.section = false;
                this.linger = setTimeout(() => {
                    this.linger = undefined;
                    if (!this.section) void this.unlock();
                }, LOCK_LINGER_MS);
                this.linger.unref();
            }
        } finally {
            release();
        }
    }

    /** Wait for queued work, then let the interpreter exit (which also releases the lock). */
    async close(): Promise<void> {
        if (this.linger) clearTimeout(this.linger);
        this.linger = undefined;
        await this.tail.catch(() => undefined);
        const p = this.proc;
        this.proc = undefined;
        p?.end();
    }

    private enqueue<T>(fn: () => Promise<T>): Promise<T> {
        const next = this.tail.then(fn, fn);
        this.tail = next.catch(() => undefined);
        return next;
    }

    private async process(): Promise<InterpreterProcess> {
        if (this.proc) return this.proc;
        if (!this.starting) {
            this.starting = (async () => {
                const p = await this.spawn();
                p.onData((chunk) => this.sink?.data(decoders.get(p)!.write(chunk)));
                p.onExit((err) => {
                    if (this.proc === p) this.proc = undefined;
                    this.sink?.exit(err ?? new Error(`the batch interpreter exited: ${p.stderr().trim() || "no message"}`));
                });
                decoders.set(p, new StringDecoder("utf8"));
                this.proc = p;
                const wasHeld = this.held;
                this.held = false;
                if (this.section && wasHeld) {
                    // A fresh process inside a locked section: take the lock again without waiting (see the class comment).
                    const [r] = await this.exchange(p, { ops: [lockOp(SHORT_STEP_MS)], lines: ["lock 0"] }, {}).catch(() => [{ ok: false } as OpResult]);
                    this.held = r.ok;
                }
                return p;
            })().finally(() => (this.starting = undefined));
        }
        return this.starting;
    }

    private async drive(batch: Line, opts: RunOptions): Promise<OpResult[]> {
        const p = await this.process();
        return this.exchange(p, batch, opts);
    }

    /**
     * Send one batch and parse trailers as they stream in, enforcing each op's time limit from the moment the
     * previous one finished. A timed-out op is reported as ETIMEDOUT and the process is abandoned.
     */
    private exchange(p: InterpreterProcess, batch: Line, opts: RunOptions): Promise<OpResult[]> {
        const { ops } = batch;
        const boundary = newBoundary();
        this.roundTrips++;
        return new Promise((resolve, reject) => {
            const results: OpResult[] = [];
            let buf = "";
            let timer: NodeJS.Timeout | undefined;
            let done = false;
            let stopped = false;
            const marker = "\n" + boundary + " ";

            const finish = (err?: Error) => {
                if (done) return;
                done = true;
                if (timer) clearTimeout(timer);
                this.sink = undefined;
                p.keepAlive(false);
                if (err) return reject(err);
                while (results.length < ops.length) results.push({ ok: false, data: "", skipped: true });
                resolve(results);
            };
            const arm = () => {
                if (timer) clearTimeout(timer);
                const i = results.length;
                // After a stop, the interpreter only skips lines up to the batch's end: the read limit is plenty.
                const op = stopped || i >= ops.length ? undefined : ops[i];
                const ms = op ? defaultTimeout(op) : SHORT_STEP_MS;
                timer = setTimeout(() => {
                    if (op) results.push({ ok: false, data: "", errno: "ETIMEDOUT", message: `${describeOp(op)} did not finish within ${ms} ms` });
                    if (this.proc === p) this.proc = undefined;
                    finish();
                    p.abandon();
                }, ms);
            };
            this.sink = {
                data: (text) => {
                    buf += text;
                    for (;;) {
                        const at = buf.indexOf(marker);
                        if (at < 0) break;
                        const eol = buf.indexOf("\n", at + marker.length);
                        if (eol < 0) break;
                        const content = buf.slice(0, at);
                        const [idx, status, ...msg] = buf.slice(at + marker.length, eol).split(" ");
                        buf = buf.slice(eol + 1);
                        if (idx === "end") return finish();
                        const op = ops[Number(idx)];
                        const r = toResult(op, Number(status), content, msg.join(" ").trim());
                        results.push(r);
                        if (!r.ok && opts.stopOnError && op && isMutation(op) && !("optional" in op && op.optional)) stopped = true;
                        arm();
                    }
                },
                exit: (err) => finish(new Error(`${err?.message ?? "the batch interpreter exited"} (after ${results.length} of ${ops.length} operations)`)),
            };
            p.keepAlive(true);
            arm();
            p.write([`batch ${boundary} ${opts.stopOnError ? 1 : 0}`, ...batch.lines, "end"].join("\n") + "\n");
        });
    }
}

const decoders = new WeakMap<InterpreterProcess, StringDecoder>();

/**
 * How long the lock stays held after a locked section ends, in milliseconds, so a program that changes a host several
 * times in a row (create then delete, or the resources of one `pulumi up`) takes it once (taking it costs a flock(1)
 * process); another program waits at most this much longer. The lock is never dropped inside a section, and always
 * with the interpreter (when the program ends).
 */
export const LOCK_LINGER_MS = 2_000;

/** Time allowed for the interpreter's own short steps (drop the lock, skip to a batch's end). */
const SHORT_STEP_MS = 10_000;

/** A stand-in op for the lock lines, so time limits and messages work as for any other op. */
function lockOp(timeoutMs: number): Op {
    return { op: "exec", argv: ["flock", LOCK_PATH], timeoutMs };
}

function toResult(op: Op | undefined, code: number, content: string, message: string): OpResult {
    const r: OpResult = { ok: code === 0, data: content };
    if (op?.op === "exec") r.code = code;
    if (code !== 0) {
        r.data = op?.op === "exec" || op?.op === "groupHolders" ? content : "";
        r.message = message;
        r.errno = op?.op === "exec" ? undefined : code === 4 && op && isGuardRead(op) ? "ESTALE" : errnoFromMessage(message) ?? (message === "not a link" ? "EINVAL" : undefined);
    } else if (op?.op === "exec" && message) {
        r.message = message;
    }
    return r;
}

export function describeOp(op: Op): string {
    switch (op.op) {
        case "exec":
            return `running ${op.argv.join(" ")}`;
        case "write":
            return `writing ${JSON.stringify(op.data)} to ${op.path}`;
        case "put":
            return `writing ${op.path}`;
        default:
            return `${op.op} ${op.path}`;
    }
}

/** Quote an argv for a remote shell, each word in single quotes. Used for SSH exec only. */
export function quoteArgv(argv: string[]): string {
    return argv.map((a) => "'" + a.replace(/'/g, `'\\''`) + "'").join(" ");
}

/**
 * A whole batch as the interpreter's stdin, for a file a process on the host runs later with no pulumi-vfio attached
 * (the console dead-man: `bash batch.sh <lock file> < <this text>`): the batch line, the lock taken first (waiting
 * `lockSeconds`; without it the interpreter runs nothing of the batch), every op, and the end.
 */
export function batchFileText(ops: Op[], opts: { stopOnError: boolean; lockSeconds: number }): string {
    return [`batch ${newBoundary()} ${opts.stopOnError ? 1 : 0}`, `lock ${opts.lockSeconds}`, ...ops.map(encodeOp), "end", ""].join("\n");
}

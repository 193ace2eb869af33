/**
 * A small typed client for the QEMU Machine Protocol (docs/interop/qmp-spec.rst in the QEMU tree): JSON objects
 * separated by CRLF over a stream socket. The server greets with `{"QMP": {...}}`; nothing but
 * `qmp_capabilities` is accepted until the client has sent it; then each `{"execute", "arguments", "id"}` gets
 * exactly one `{"return"|"error", "id"}`, and asynchronous `{"event", "data", "timestamp"}` messages can arrive
 * between them at any time. No maintained npm library exists for this, so it is ours, and it is short.
 *
 * The stream comes from `Host.openUnixSocket`, so the same client talks to a local QEMU, one over SSH
 * (a direct-streamlocal channel) and the fake QEMU of the tests.
 */
import { Duplex } from "stream";

/** `query-status`: `running` is false while paused, shut down (with -no-shutdown), or in an error state. */
export interface QmpStatus {
    running: boolean;
    status: string;
    singlestep?: boolean;
}

/** One device in `query-pci`'s tree; bridges (our root ports) carry their secondary bus. */
export interface QmpPciDevice {
    bus: number;
    slot: number;
    function: number;
    class_info: { class: number; desc?: string };
    id: { vendor: number; device: number; subsystem?: number; "subsystem-vendor"?: number };
    qdev_id: string;
    pci_bridge?: { bus: { number: number; secondary: number; subordinate: number }; devices?: QmpPciDevice[] };
    regions?: unknown[];
}

export interface QmpPciBus {
    bus: number;
    devices: QmpPciDevice[];
}

/** `query-cpus-fast`: the host thread of each vCPU, what CPU pinning pins. */
export interface QmpCpu {
    "cpu-index": number;
    "thread-id": number;
    "qom-path"?: string;
    target?: string;
    props?: Record<string, number>;
}

/** The commands pulumi-vfio uses, with their argument and return types. */
export interface QmpCommands {
    qmp_capabilities: { args: { enable?: string[] } | undefined; ret: Record<string, never> };
    "query-status": { args: undefined; ret: QmpStatus };
    "query-name": { args: undefined; ret: { name?: string } };
    "query-pci": { args: undefined; ret: QmpPciBus[] };
    "query-cpus-fast": { args: undefined; ret: QmpCpu[] };
    "qom-list": { args: { path: string }; ret: { name: string; type: string }[] };
    system_powerdown: { args: undefined; ret: Record<string, never> };
    quit: { args: undefined; ret: Record<string, never> };
    cont: { args: undefined; ret: Record<string, never> };
    stop: { args: undefined; ret: Record<string, never> };
}

export interface QmpEvent {
    event: string;
    data?: Record<string, unknown>;
    timestamp?: { seconds: number; microseconds: number };
}

export interface QmpGreeting {
    version?: { qemu?: { major: number; minor: number; micro: number }; package?: string };
    capabilities?: string[];
}

/** QEMU answered with `{"error": {"class", "desc"}}`. */
export class QmpError extends Error {
    constructor(
        public readonly command: string,
        public readonly errorClass: string,
        public readonly desc: string,
    ) {
        super(`QMP ${command} failed: ${errorClass}: ${desc}`);
        this.name = "QmpError";
    }
}

/** No answer in time, or the connection closed before the answer (QEMU exited). */
export class QmpTimeout extends Error {
    constructor(message: string) {
        super(message);
        this.name = "QmpTimeout";
    }
}

export const QMP_DEFAULT_TIMEOUT_MS = 10_000;

interface Pending {
    command: string;
    resolve: (v: unknown) => void;
    reject: (e: Error) => void;
    timer: NodeJS.Timeout;
}

export class QmpClient {
    /** Every event received so far, in order; `waitForEvent` looks here first, so an early event is not lost. */
    readonly events: QmpEvent[] = [];
    greeting: QmpGreeting = {};
    private buf = "";
    private nextId = 1;
    private pending = new Map<string, Pending>();
    private eventWaiters: { name: string; from: number; resolve: (e: QmpEvent | undefined) => void; timer: NodeJS.Timeout }[] = [];
    private greeted?: { resolve: (g: QmpGreeting) => void; reject: (e: Error) => void };
    private closedFlag = false;
    /** Resolves when the stream ends (QEMU closed the socket or exited). */
    readonly closed: Promise<void>;
    private markClosed!: () => void;

    private constructor(private readonly stream: Duplex) {
        this.closed = new Promise((r) => (this.markClosed = r));
        stream.setEncoding?.("utf8");
        stream.on("data", (d: string | Buffer) => this.onData(typeof d === "string" ? d : d.toString("utf8")));
        const end = (why: string) => this.onClose(why);
        stream.on("end", () => end("QEMU closed the QMP connection"));
        stream.on("close", () => end("QEMU closed the QMP connection"));
        stream.on("error", (e: Error) => end(`QMP connection error: ${e.message}`));
    }

    /**
     * Read the greeting and negotiate capabilities on a freshly opened stream.
     * @throws QmpTimeout when the greeting does not arrive within `timeoutMs` (the socket is not QEMU's, or QEMU hangs).
     */
    static async connect(stream: Duplex, timeoutMs = QMP_DEFAULT_TIMEOUT_MS): Promise<QmpClient> {
        const c = new QmpClient(stream);
        try {
            c.greeting = await new Promise<QmpGreeting>((resolve, reject) => {
                const timer = setTimeout(() => reject(new QmpTimeout(`no QMP greeting within ${timeoutMs} ms`)), timeoutMs);
                c.greeted = {
                    resolve: (g) => {
                        clearTimeout(timer);
                        resolve(g);
                    },
                    reject: (e) => {
                        clearTimeout(timer);
                        reject(e);
                    },
                };
            });
            await c.execute("qmp_capabilities", undefined, timeoutMs);
        } catch (e) {
            c.close();
            throw e;
        }
        return c;
    }

    get isClosed(): boolean {
        return this.closedFlag;
    }

    /** Run one command and resolve with its `return` value. */
    execute<K extends keyof QmpCommands>(command: K, args?: QmpCommands[K]["args"], timeoutMs = QMP_DEFAULT_TIMEOUT_MS): Promise<QmpCommands[K]["ret"]> {
        if (this.closedFlag) return Promise.reject(new QmpTimeout(`QMP ${command}: the connection is closed`));
        const id = `pv-${this.nextId++}`;
        const msg: Record<string, unknown> = { execute: command, id };
        if (args !== undefined) msg.arguments = args;
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.pending.delete(id);
                reject(new QmpTimeout(`QMP ${command}: no answer within ${timeoutMs} ms`));
            }, timeoutMs);
            this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
            this.stream.write(JSON.stringify(msg) + "\r\n");
        });
    }

    /**
     * The first event named `name` received at or after position `from` of {@link events} (default: any so far), or
     * undefined when none arrives within `timeoutMs` or the connection closes first.
     */
    waitForEvent(name: string, timeoutMs: number, from = 0): Promise<QmpEvent | undefined> {
        const seen = this.events.slice(from).find((e) => e.event === name);
        if (seen) return Promise.resolve(seen);
        if (this.closedFlag) return Promise.resolve(undefined);
        return new Promise((resolve) => {
            const w = {
                name,
                from,
                resolve: (e: QmpEvent | undefined) => {
                    clearTimeout(w.timer);
                    this.eventWaiters = this.eventWaiters.filter((x) => x !== w);
                    resolve(e);
                },
                timer: setTimeout(() => w.resolve(undefined), timeoutMs),
            };
            this.eventWaiters.push(w);
        });
    }

    /** Resolves true when the connection closes within `timeoutMs` (after `quit`: QEMU has exited or is exiting). */
    async waitClosed(timeoutMs: number): Promise<boolean> {
        if (this.closedFlag) return true;
        let timer: NodeJS.Timeout | undefined;
        const r = await Promise.race([this.closed.then(() => true), new Promise<boolean>((res) => (timer = setTimeout(() => res(false), timeoutMs)))]);
        if (timer) clearTimeout(timer);
        return r;
    }

    close(): void {
        this.stream.destroy();
        this.onClose("closed by us");
    }

    private onData(chunk: string): void {
        this.buf += chunk;
        for (;;) {
            const nl = this.buf.indexOf("\n");
            if (nl < 0) break;
            const line = this.buf.slice(0, nl).trim();
            this.buf = this.buf.slice(nl + 1);
            if (!line) continue;
            let msg: any;
            try {
                msg = JSON.parse(line);
            } catch {
                continue; // not ours to interpret; QMP never sends partial objects on one line
            }
            this.dispatch(msg);
        }
    }

    private dispatch(msg: any): void {
        if (msg && typeof msg === "object" && "QMP" in msg) {
            this.greeted?.resolve(msg.QMP ?? {});
            this.greeted = undefined;
            return;
        }
        if (msg && typeof msg.event === "string") {
            const e: QmpEvent = { event: msg.event, data: msg.data, timestamp: msg.timestamp };
            this.events.push(e);
            const at = this.events.length - 1;
            for (const w of [...this.eventWaiters]) if (w.name === e.event && at >= w.from) w.resolve(e);
            return;
        }
        const id = msg?.id === undefined ? undefined : String(msg.id);
        const p = id === undefined ? undefined : this.pending.get(id);
        if (!p) return;
        this.pending.delete(id!);
        clearTimeout(p.timer);
        if ("error" in msg) p.reject(new QmpError(p.command, msg.error?.class ?? "GenericError", msg.error?.desc ?? "unknown error"));
        else p.resolve(msg.return);
    }

    private onClose(why: string): void {
        if (this.closedFlag) return;
        this.closedFlag = true;
        this.greeted?.reject(new QmpTimeout(`${why} before the greeting`));
        for (const [, p] of this.pending) {
            clearTimeout(p.timer);
            p.reject(new QmpTimeout(`QMP ${p.command}: ${why} before answering`));
        }
        this.pending.clear();
        for (const w of [...this.eventWaiters]) w.resolve(undefined);
        this.markClosed();
    }
}

/** Every device `query-pci` reports, bridges' secondary buses included, flattened. */
export function flattenPci(buses: QmpPciBus[]): QmpPciDevice[] {
    const out: QmpPciDevice[] = [];
    const walk = (devices: QmpPciDevice[] | undefined) => {
        for (const d of devices ?? []) {
            out.push(d);
            walk(d.pci_bridge?.devices);
        }
    };
    for (const b of buses) walk(b.devices);
    return out;
}

/**
 * Our QMP client against a scripted server on an in-memory stream: greeting and capabilities negotiation, replies
 * matched by id whatever their order, errors, events that arrive before anyone waits for them, timeouts, and a
 * connection that closes (QEMU exiting) under pending commands.
 */
import { Duplex, PassThrough } from "stream";
import { QmpClient, QmpError, QmpTimeout, flattenPci } from "../../provider/qemu/qmp";

interface Script {
    greet?: boolean;
    /** Answer a command; return undefined to stay silent. */
    on?: (msg: any, send: (o: unknown) => void) => void;
}

function server(script: Script = {}): { stream: Duplex; send: (o: unknown) => void; received: any[]; end: () => void } {
    const toServer = new PassThrough();
    const toClient = new PassThrough();
    const received: any[] = [];
    const send = (o: unknown) => toClient.write(JSON.stringify(o) + "\r\n");
    let buf = "";
    toServer.on("data", (d: Buffer) => {
        buf += d.toString();
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            const msg = JSON.parse(line);
            received.push(msg);
            if (msg.execute === "qmp_capabilities") send({ return: {}, id: msg.id });
            else script.on?.(msg, send);
        }
    });
    if (script.greet !== false) send({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: "" }, capabilities: ["oob"] } });
    return { stream: Duplex.from({ readable: toClient, writable: toServer }), send, received, end: () => toClient.end() };
}

test("negotiates capabilities first, then matches replies to commands by id", async () => {
    const s = server({
        on: (msg, send) => {
            // Answer out of order: the later command first.
            if (msg.execute === "query-name") setTimeout(() => send({ return: { name: "vm1" }, id: msg.id }), 20);
            if (msg.execute === "query-status") send({ return: { status: "running", running: true }, id: msg.id });
        },
    });
    const c = await QmpClient.connect(s.stream);
    expect(c.greeting.version?.qemu?.major).toBe(7);
    expect(s.received[0]).toMatchObject({ execute: "qmp_capabilities" });
    const [name, status] = await Promise.all([c.execute("query-name"), c.execute("query-status")]);
    expect(name).toEqual({ name: "vm1" });
    expect(status.status).toBe("running");
    expect(new Set(s.received.map((m) => m.id)).size).toBe(3);
    c.close();
});

test("an error reply becomes a QmpError with QEMU's class and description", async () => {
    const s = server({ on: (msg, send) => send({ error: { class: "CommandNotFound", desc: `The command ${msg.execute} has not been found` }, id: msg.id }) });
    const c = await QmpClient.connect(s.stream);
    const err = await c.execute("query-cpus-fast").catch((e) => e);
    expect(err).toBeInstanceOf(QmpError);
    expect(err.message).toBe("QMP query-cpus-fast failed: CommandNotFound: The command query-cpus-fast has not been found");
    c.close();
});

test("an event that arrives before the wait is not lost; waiting from a later position ignores it", async () => {
    const s = server({
        on: (msg, send) => {
            if (msg.execute === "system_powerdown") {
                send({ return: {}, id: msg.id });
                send({ event: "POWERDOWN", data: {}, timestamp: { seconds: 1, microseconds: 0 } });
                send({ event: "SHUTDOWN", data: { guest: true, reason: "guest-shutdown" }, timestamp: { seconds: 1, microseconds: 5 } });
            }
        },
    });
    const c = await QmpClient.connect(s.stream);
    const from = c.events.length;
    await c.execute("system_powerdown");
    await new Promise((r) => setTimeout(r, 10));
    expect((await c.waitForEvent("SHUTDOWN", 1000, from))?.data).toEqual({ guest: true, reason: "guest-shutdown" });
    expect(await c.waitForEvent("SHUTDOWN", 50, c.events.length)).toBeUndefined();
    c.close();
});

test("a guest that ignores powerdown: no SHUTDOWN within the timeout resolves undefined", async () => {
    const s = server({ on: (msg, send) => send({ return: {}, id: msg.id }) });
    const c = await QmpClient.connect(s.stream);
    await c.execute("system_powerdown");
    expect(await c.waitForEvent("SHUTDOWN", 100)).toBeUndefined();
    c.close();
});

test("a QEMU that never answers times out with the command named", async () => {
    const s = server({ on: () => undefined });
    const c = await QmpClient.connect(s.stream);
    await expect(c.execute("query-pci", undefined, 50)).rejects.toThrow(new QmpTimeout("QMP query-pci: no answer within 50 ms"));
    c.close();
});

test("no greeting (not a QMP socket, or QEMU wedged) fails the connect", async () => {
    const s = server({ greet: false });
    await expect(QmpClient.connect(s.stream, 50)).rejects.toThrow(/no QMP greeting within 50 ms/);
});

test("QEMU exiting under a pending command rejects it and resolves the waits", async () => {
    const s = server({
        on: (msg, send) => {
            if (msg.execute === "quit") {
                send({ return: {}, id: msg.id });
                send({ event: "SHUTDOWN", data: { guest: false, reason: "host-qmp-quit" } });
                s.end();
            }
        },
    });
    const c = await QmpClient.connect(s.stream);
    const pending = c.execute("query-status", undefined, 5000);
    await c.execute("quit");
    await expect(pending).rejects.toThrow(/query-status: QEMU closed the QMP connection before answering/);
    expect(await c.waitClosed(1000)).toBe(true);
    expect(await c.waitForEvent("RESET", 1000)).toBeUndefined();
    await expect(c.execute("query-status")).rejects.toThrow(/the connection is closed/);
});

test("query-pci's tree is flattened through root ports", () => {
    const dev = (slot: number, fn: number, qdev: string, bridge?: any) => ({ bus: 0, slot, function: fn, class_info: { class: 0x0604 }, id: { vendor: 1, device: 2 }, qdev_id: qdev, ...(bridge ? { pci_bridge: bridge } : {}) });
    const tree = [{ bus: 0, devices: [dev(0, 0, ""), dev(1, 0, "rp0", { bus: { number: 1, secondary: 1, subordinate: 1 }, devices: [dev(0, 0, "hostdev0"), dev(0, 1, "hostdev1")] })] }];
    expect(flattenPci(tree).map((d) => d.qdev_id)).toEqual(["", "rp0", "hostdev0", "hostdev1"]);
});

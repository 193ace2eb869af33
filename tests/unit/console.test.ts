/**
 * IommuBinding consoleHandover on the fake kernel (provider/console/handover.ts, binding/plan.ts, binding/apply.ts):
 * single-GPU passthrough of the lab's console GPU 00:01.0 (bochs-drm, fbcon on vtcon0). What the preview lists, the
 * order the steps run in, that destroy gives back exactly what was taken, that a failure half-way leaves the console
 * as it was, and the dead-man timer that gives the console back with no pulumi running. The fake's console model is
 * proven on the lab kernel by tests/contract/console.*; the whole thing by tests/lab/console.lab.test.ts.
 */
import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { pci } from "../fake/pci";
import { FakeKernel } from "../fake/kernel";
import { addBootFramebuffer, consoleState, decodeBatch, fireTimers } from "../fake/console";
import { InterceptingHost } from "../fake/intercepting";
import { IommuBindingOutputs, check, create, diff, read, remove, update } from "../../provider/iommuBinding";
import { Host, Op, OpResult, RunOptions } from "../../provider/host/types";
import { batchFileText, encodeOp } from "../../provider/host/batch";
import { consoleJournalPath, deadManBatchFile, deadManScript } from "../../provider/console/handover";

const GPU = "0000:00:01.0";
const DM = "display-manager.service";
let k: FakeKernel;
let host: FakeHost;
const driver = () => pci(k).devices[GPU].driver;
const vt = () => k.read("/sys/class/vtconsole/vtcon0/bind").trim();
const dmActive = () => consoleState(k).units[DM];
const GROUP = () => pci(k).devices[GPU].group;
const INPUTS = { device: GPU, allowBootVga: true, consoleHandover: true };

/** Records every batch (ops in order), so a test can tell the order of the steps. */
class Recorder extends InterceptingHost {
    batches: Op[][] = [];
    protected runOn(target: Host, ops: Op[], opts?: RunOptions): Promise<OpResult[]> {
        this.batches.push(ops);
        return target.run(ops, opts);
    }
}

beforeEach(() => {
    k = fakeLabKernel();
    host = new FakeHost(k);
    consoleState(k).units[DM] = true;
});

async function handOver(inputs: Record<string, unknown> = INPUTS, on: Host = host): Promise<IommuBindingOutputs> {
    const c = await check({}, inputs, on);
    expect(c.failures).toEqual([]);
    return (await create(c.inputs, on)).outs;
}

describe("preview", () => {
    test("lists the handover's steps in order, the release on destroy and the dead-man", async () => {
        const c = await check({}, INPUTS, host);
        expect(c.failures).toEqual([]);
        const g = GROUP();
        expect(c.inputs.plan).toEqual([
            `${GPU} (VGA controller 1234:1111): bochs-drm → vfio-pci`,
            expect.stringMatching(new RegExp(`^${GPU} \\(VGA controller 1234:1111\\): no reset method`)),
            `console handover, before ${GPU} leaves its driver: 1. stop ${DM} (active now); 2. unbind vtcon0 ((M) frame buffer device; the virtual consoles go to the dummy console)`,
            `console release on destroy, once ${GPU} is back on bochs-drm: 1. bind vtcon0 again (fbcon also takes the consoles back by itself when bochs-drm registers its framebuffer); 2. start ${DM}`,
            expect.stringContaining(`dead-man pulumi-vfio-deadman-${g}.timer (systemd, on the host): 120 s after the handover, unless a process holds /dev/vfio/${g} then`),
        ]);
        // The preview changed nothing.
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "1", true]);
    });

    test("a display manager that is not running is left alone, and deadManSeconds: 0 arms no timer", async () => {
        consoleState(k).units[DM] = false;
        const c = await check({}, { ...INPUTS, deadManSeconds: 0 }, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan!.find((l) => l.startsWith("console handover"))).toBe(`console handover, before ${GPU} leaves its driver: 1. unbind vtcon0 ((M) frame buffer device; the virtual consoles go to the dummy console)`);
        expect(c.inputs.plan!.some((l) => l.startsWith("dead-man"))).toBe(false);
    });

    test("consoleHandover without allowBootVga is refused, naming both fields", async () => {
        const c = await check({}, { device: GPU, consoleHandover: true }, host);
        expect(c.failures.map((f) => f.property).sort()).toEqual(["allowBootVga", "consoleHandover"]);
        expect(c.failures.find((f) => f.property === "consoleHandover")!.reason).toContain("needs allowBootVga: true");
    });

    test("a group without a display controller has no console to hand over", async () => {
        const c = await check({}, { device: "0000:02:00.0", allowBootVga: true, consoleHandover: true }, host);
        expect(c.failures).toEqual([{ property: "consoleHandover", reason: expect.stringContaining("has no display controller (class 03xx)") }]);
    });

    test("without systemd-run the dead-man is refused at preview, with the way out", async () => {
        delete k.state.files["/usr/bin/systemd-run"];
        const c = await check({}, INPUTS, host);
        expect(c.failures).toEqual([{ property: "deadManSeconds", reason: expect.stringContaining("set deadManSeconds: 0") }]);
    });
});

describe("handover and release", () => {
    test("up stops the display manager, unbinds fbcon, then moves the GPU; destroy gives back exactly that", async () => {
        const rec = new Recorder(host);
        const outs = await handOver(INPUTS, rec);
        expect([driver(), vt(), dmActive()]).toEqual(["vfio-pci", "0", false]);
        expect(outs.console).toEqual({ displayManagerStopped: DM, vtconsoles: ["vtcon0"], framebuffers: [], deadMan: { unit: `pulumi-vfio-deadman-${GROUP()}`, seconds: 120 } });

        // The order within the change's batch: the dead-man armed and the console journal written before the first
        // step, then the display manager, the vtconsole (read back), the GPU off bochs-drm.
        const change = rec.batches.find((b) => b.some((o) => o.op === "write" && o.path.endsWith("bochs-drm/unbind")))!;
        const at = (p: (o: Op) => boolean) => change.findIndex(p);
        const arm = at((o) => o.op === "exec" && o.argv[0] === "systemd-run");
        const journal = at((o) => o.op === "put" && o.path === consoleJournalPath(GPU));
        const stop = at((o) => o.op === "exec" && o.argv.join(" ") === `systemctl stop ${DM}`);
        const vtWrite = at((o) => o.op === "write" && o.path === "/sys/class/vtconsole/vtcon0/bind");
        const vtCheck = at((o) => o.op === "read" && o.path === "/sys/class/vtconsole/vtcon0/bind" && o.expect === "0");
        const unbind = at((o) => o.op === "write" && o.path.endsWith("bochs-drm/unbind"));
        expect(arm).toBeGreaterThanOrEqual(0);
        expect([arm < journal, journal < stop, stop < vtWrite, vtWrite < vtCheck, vtCheck < unbind]).toEqual([true, true, true, true, true]);
        expect(k.state.files[consoleJournalPath(GPU)]).toMatchObject({ mode: 0o600 });
        expect(JSON.parse(k.state.files[consoleJournalPath(GPU)].data)).toEqual({ displayManagerStopped: DM, vtconsoles: ["vtcon0"], framebuffers: [] });

        // The dead-man's files are root's alone; its timer is armed.
        expect(k.state.files[deadManScript(GROUP())].mode).toBe(0o700);
        expect(k.state.files[deadManBatchFile(GROUP())].mode).toBe(0o600);
        expect(Object.keys(consoleState(k).timers)).toEqual([`pulumi-vfio-deadman-${GROUP()}`]);

        await remove(GPU, outs, host);
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "1", true]);
        expect(consoleState(k).timers).toEqual({});
        expect(k.state.files[deadManScript(GROUP())]).toBeUndefined();
        expect(k.state.files[deadManBatchFile(GROUP())]).toBeUndefined();
        expect(k.state.files[consoleJournalPath(GPU)]).toBeUndefined();
    });

    test("a provider killed right after it stopped the display manager loses nothing: the next up and destroy start it again", async () => {
        // The connection drops in the middle of the change's batch, after `systemctl stop`: the state records nothing.
        class Cut extends InterceptingHost {
            protected async runOn(target: Host, ops: Op[], opts?: RunOptions): Promise<OpResult[]> {
                const i = ops.findIndex((o) => o.op === "exec" && o.argv.join(" ") === `systemctl stop ${DM}`);
                if (i < 0) return target.run(ops, opts);
                await target.run(ops.slice(0, i + 1), opts);
                throw new Error("the SSH connection dropped");
            }
        }
        const c = await check({}, INPUTS, host);
        await expect(create(c.inputs, new Cut(host))).rejects.toThrow("the SSH connection dropped");
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "1", false]);
        // The next up: the display manager is not running now, but the console journal says it was.
        const outs = await handOver();
        expect(outs.console!.displayManagerStopped).toBe(DM);
        await remove(GPU, outs, host);
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "1", true]);
    });

    test("a provider killed after the handover's first steps is rescued by the dead-man it armed first", async () => {
        class Cut extends InterceptingHost {
            protected async runOn(target: Host, ops: Op[], opts?: RunOptions): Promise<OpResult[]> {
                const i = ops.findIndex((o) => o.op === "read" && o.path === "/sys/class/vtconsole/vtcon0/bind" && o.expect === "0");
                if (i < 0) return target.run(ops, opts);
                await target.run(ops.slice(0, i + 1), opts);
                throw new Error("killed");
            }
        }
        const c = await check({}, INPUTS, host);
        await expect(create(c.inputs, new Cut(host))).rejects.toThrow("killed");
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "0", false]);
        await fireTimers(host);
        expect(dmActive()).toBe(true);
        expect(k.state.files[consoleJournalPath(GPU)]).toBeUndefined();
    });

    test("a boot framebuffer on a GPU without a host driver is unbound and bound again; fbcon comes back with it", async () => {
        // The host never loaded a driver for the GPU: efifb drives the console.
        k.write(`/sys/bus/pci/drivers/bochs-drm/unbind`, GPU);
        addBootFramebuffer(k, GPU);
        consoleState(k).units[DM] = false;
        k.write("/sys/class/vtconsole/vtcon0/bind", "1");
        const c = await check({}, INPUTS, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan).toContain(`console handover, before ${GPU} leaves its driver: 1. unbind vtcon0 ((M) frame buffer device; the virtual consoles go to the dummy console); 2. unbind the boot framebuffer efi-framebuffer.0 from efi-framebuffer`);
        const outs = (await create(c.inputs, host)).outs;
        expect(driver()).toBe("vfio-pci");
        expect(consoleState(k).platform[0].bound).toBe(false);
        await remove(GPU, outs, host);
        expect(driver()).toBeNull();
        expect(consoleState(k).platform[0].bound).toBe(true);
        expect(vt()).toBe("1");
    });

    test("a vtconsole that does not let go stops the change before the GPU moves, and the display manager runs again", async () => {
        k.injectFault("/sys/class/vtconsole/vtcon0/bind", "EBUSY");
        const c = await check({}, INPUTS, host);
        await expect(create(c.inputs, host)).rejects.toThrow(/vtcon0\/bind.*EBUSY/);
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "1", true]);
        expect(consoleState(k).timers).toEqual({});
    });

    test("vfio-pci refusing the GPU rolls everything back: bochs-drm, fbcon and the display manager", async () => {
        k.injectFault("/sys/bus/pci/drivers_probe", "EIO", GPU);
        k.injectFault("/sys/bus/pci/drivers/vfio-pci/bind", "EIO", GPU);
        const c = await check({}, INPUTS, host);
        await expect(create(c.inputs, host)).rejects.toThrow(/binding 0000:00:01\.0 to vfio-pci failed/);
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "1", true]);
        expect(consoleState(k).timers).toEqual({});
    });

    test("destroy whose display manager will not start says so, with the command, after giving the GPU back", async () => {
        const outs = await handOver();
        delete consoleState(k).units[DM]; // the unit file went away meanwhile
        const err = await remove(GPU, outs, host).then(() => undefined, (e: Error) => e.message);
        expect(err).toContain(`every member is back on its host driver, but the console is not: systemctl start ${DM} failed (Failed to start ${DM}: Unit ${DM} not found.)`);
        expect(err).toContain(`By hand: echo 1 > /sys/class/vtconsole/vtcon0/bind; systemctl start ${DM}; \`pulumi destroy\` again retries`);
        expect([driver(), vt()]).toEqual(["bochs-drm", "1"]);
        // Put back, a second destroy finishes.
        consoleState(k).units[DM] = false;
        await remove(GPU, outs, host);
        expect(dmActive()).toBe(true);
    });
});

describe("the dead-man", () => {
    test("with no VM holding the group, it gives the console back by itself; refresh sees the drift, up hands over again", async () => {
        const outs = await handOver();
        expect(await fireTimers(host)).toEqual([`pulumi-vfio-deadman-${GROUP()}`]);
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "1", true]);
        // What pulumi refresh then sees: the GPU is off vfio-pci, which up repairs.
        const seen = (await read(GPU, outs, host)).props!;
        expect(seen.members.find((m) => m.address === GPU)!.driver).toBe("bochs-drm");
        expect(diff(GPU, seen, INPUTS).changes).toBe(true);
        const again = (await update(GPU, seen, (await check(seen, INPUTS, host)).inputs, host)).outs;
        expect([driver(), vt(), dmActive()]).toEqual(["vfio-pci", "0", false]);
        expect(Object.keys(consoleState(k).timers)).toHaveLength(1);
        await remove(GPU, again, host);
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "1", true]);
    });

    test("a destroy after the dead-man fired finishes: the console steps are repeated harmlessly", async () => {
        const outs = await handOver();
        await fireTimers(host);
        await remove(GPU, outs, host);
        expect([driver(), vt(), dmActive()]).toEqual(["bochs-drm", "1", true]);
    });

    test("while a VM holds /dev/vfio/<group>, it changes nothing", async () => {
        await handOver();
        k.state.openers[`/dev/vfio/${GROUP()}`] = [4242];
        k.state.processes["4242"] = "qemu-system-x86";
        await fireTimers(host);
        expect([driver(), vt(), dmActive()]).toEqual(["vfio-pci", "0", false]);
    });

    test("its batch is the interpreter's own protocol: the lock first, then the group-holders guard", async () => {
        await handOver();
        const text = k.state.files[deadManBatchFile(GROUP())].data;
        const { ops, stopOnError, lockSeconds } = decodeBatch(text);
        expect([stopOnError, lockSeconds]).toEqual([true, 120]);
        expect(ops[0]).toEqual({ op: "groupHolders", path: `/sys/bus/pci/devices/${GPU}`, guard: true });
        expect(ops.some((o) => o.op === "write" && o.path.endsWith("/reset"))).toBe(false);
        // decodeBatch is the inverse of the encoder.
        expect(decodeBatch(batchFileText(ops, { stopOnError: true, lockSeconds: 120 })).ops.map(encodeOp)).toEqual(ops.map(encodeOp));
    });
});

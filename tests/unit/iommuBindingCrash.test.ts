/**
 * IommuBinding when the provider dies midway (SIGKILL, a lost SSH session): at every point of the create batch and
 * of the delete batch, the host keeps the record of what it had (the journal), and a fresh process's `up` and
 * `destroy` give the GPU back to bochs-drm and its audio function back to snd_hda_intel.
 */
import { InterceptingHost } from "../fake/intercepting";
import { withLockThrough } from "../../provider/host/lock";
import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { pci } from "../fake/pci";
import { FakeKernel } from "../fake/kernel";
import { Host, Op, OpResult, RunOptions } from "../../provider/host/types";
import { IommuBindingOutputs, check, create, diff, read, remove, update } from "../../provider/iommuBinding";
import { JOURNAL_DIR, journalPath } from "../../provider/sysfs/journal";
import { describeOp } from "../../provider/host/batch";

const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";
const JOURNAL = journalPath(GPU);

/**
 * A provider process that dies in its change: of the first batch that writes (create's or delete's one batch), only
 * the first `k` ops reach the host, then the process is gone and every later call fails.
 */
class DyingHost extends InterceptingHost {
    dead = false;
    constructor(
        inner: FakeHost,
        private readonly k: number,
    ) {
        super(inner);
    }
    protected async runOn(target: Host, ops: Op[], opts?: RunOptions): Promise<OpResult[]> {
        if (this.dead) throw new Error("the process is gone");
        if (!ops.some((o) => o.op === "write" || o.op === "put")) return target.run(ops, opts);
        await target.run(ops.slice(0, this.k), opts);
        this.dead = true;
        throw new Error(`killed after ${this.k} of ${ops.length} operations`);
    }
}

/** The ops of the one batch a change sends, as seen by a host that records and runs it. */
async function batchOf(change: (h: Host) => Promise<unknown>, k: FakeKernel): Promise<Op[]> {
    const inner = new FakeHost(k);
    let seen: Op[] = [];
    const recorder: Host = {
        name: "recorder",
        get roundTrips() {
            return inner.roundTrips;
        },
        run: async (ops, opts) => {
            if (ops.some((o) => o.op === "write" || o.op === "put")) seen = ops;
            return inner.run(ops, opts);
        },
        // The section's batches come back through recorder.run (a locked view of it), so they are seen.
        withLock: (fn) => withLockThrough(recorder, inner, (_locked, ops, opts) => recorder.run(ops, opts), fn),
        openUnixSocket: (p) => inner.openUnixSocket(p),
        close: () => inner.close(),
    };
    await change(recorder);
    return seen;
}

const state = (k: FakeKernel, a: string) => ({ driver: pci(k).devices[a].driver, override: pci(k).devices[a].override });
const boot = [
    { driver: "bochs-drm", override: null },
    { driver: "snd_hda_intel", override: null },
];

async function upAndCreate(host: Host): Promise<IommuBindingOutputs> {
    const c = await check({}, { device: GPU }, host);
    expect(c.failures).toEqual([]);
    return (await create(c.inputs, host)).outs;
}

const createBatch = (() => {
    let ops: Op[] | undefined;
    return async () => (ops ??= await batchOf(async (h) => upAndCreate(h), fakeLabKernel()));
})();

const deleteBatch = (() => {
    let ops: Op[] | undefined;
    return async () => {
        if (ops) return ops;
        const k = fakeLabKernel();
        const outs = await upAndCreate(new FakeHost(k));
        return (ops = await batchOf((h) => remove(GPU, outs, h), k));
    };
})();

/** Every prefix of the batch, each run on a new lab machine: n ops reached the host, then the provider died. */
async function atEveryPoint(ops: Op[], body: (n: number, at: string) => Promise<void>): Promise<void> {
    for (let n = 1; n <= ops.length; n++) await body(n, `killed after ${n}: ${describeOp(ops[n - 1])}`);
}

describe("killed during create", () => {
    test("the batch writes a 0600 journal before its first write; it stays with the binding, and delete removes it", async () => {
        const ops = await createBatch();
        const firstWrite = ops.findIndex((o) => o.op === "write" || o.op === "exec");
        const put = ops.findIndex((o) => o.op === "put" && o.path === JOURNAL);
        expect(put).toBeGreaterThan(-1);
        expect(put).toBeLessThan(firstWrite);
        const k = fakeLabKernel();
        const host = new FakeHost(k);
        const outs = await upAndCreate(host);
        expect(k.state.files[JOURNAL].mode).toBe(0o600);
        expect(JSON.parse(k.read(JOURNAL))).toEqual({
            address: GPU,
            members: [
                { address: GPU, driver: "bochs-drm", override: null },
                { address: AUDIO, driver: "snd_hda_intel", override: null },
            ],
        });
        await remove(GPU, outs, host);
        expect(k.state.files[JOURNAL]).toBeUndefined();
    });

    test("at every point of the batch: a fresh up records the host's own drivers, and destroy restores them", async () => {
        const ops = await createBatch();
        await atEveryPoint(ops, async (n, at) => {
            const k = fakeLabKernel();
            await expect(upAndCreate(new DyingHost(new FakeHost(k), n))).rejects.toThrow(/killed after/);
            if (pci(k).devices[GPU].driver !== "bochs-drm" || pci(k).devices[GPU].override !== null) {
                // The host was left changed: the journal says what it had.
                expect({ at, mode: k.state.files[JOURNAL]?.mode }).toEqual({ at, mode: 0o600 });
            }

            // A new process: a new host object, nothing remembered from the one that died.
            const fresh = new FakeHost(k);
            const outs = await upAndCreate(fresh);
            expect({ at, members: outs.members.map((m) => [m.previousDriver, m.previousOverride, m.driver]) }).toEqual({
                at,
                members: [
                    ["bochs-drm", null, "vfio-pci"],
                    ["snd_hda_intel", null, "vfio-pci"],
                ],
            });
            await remove(GPU, outs, fresh);
            expect({ at, after: [state(k, GPU), state(k, AUDIO)] }).toEqual({ at, after: boot });
            expect({ at, journal: k.state.files[JOURNAL] }).toEqual({ at, journal: undefined });
        });
    });

    test("after the first member: preview says what destroy will restore", async () => {
        const ops = await createBatch();
        const probeGpu = ops.findIndex((o) => o.op === "write" && o.path === "/sys/bus/pci/drivers_probe" && o.data === GPU);
        const k = fakeLabKernel();
        await expect(upAndCreate(new DyingHost(new FakeHost(k), probeGpu + 1))).rejects.toThrow(/killed/);
        expect([state(k, GPU).driver, state(k, AUDIO).driver]).toEqual(["vfio-pci", "snd_hda_intel"]);
        const c = await check({}, { device: GPU }, new FakeHost(k));
        // The driver lines first; the reset lines after them are reset.test.ts's.
        expect(c.inputs.plan!.slice(0, 2)).toEqual([
            `${GPU} (VGA controller 1234:1111): vfio-pci (bound by an earlier change the state does not know, says the journal; destroy restores bochs-drm), no change`,
            `${AUDIO} (Audio device 8086:2668): snd_hda_intel → vfio-pci`,
        ]);
    });
});

describe("killed during delete", () => {
    test("at every point of the batch: refresh and up converge, destroy restores the host's drivers", async () => {
        const ops = await deleteBatch();
        await atEveryPoint(ops, async (n, at) => {
            const k = fakeLabKernel();
            const outs = await upAndCreate(new FakeHost(k));
            await expect(remove(GPU, outs, new DyingHost(new FakeHost(k), n))).rejects.toThrow(/killed after/);

            // `pulumi up --refresh` from a new process: read sees the members where the crash left them, up repairs.
            const fresh = new FakeHost(k);
            const r = await read(GPU, outs, fresh);
            expect({ at, previous: r.props!.members.map((m) => m.previousDriver) }).toEqual({ at, previous: ["bochs-drm", "snd_hda_intel"] });
            let current = r.props!;
            if (diff(GPU, current, outs).changes) current = (await update(GPU, current, outs, fresh)).outs;
            expect({ at, now: [state(k, GPU).driver, state(k, AUDIO).driver] }).toEqual({ at, now: ["vfio-pci", "vfio-pci"] });
            await remove(GPU, current, fresh);
            expect({ at, after: [state(k, GPU), state(k, AUDIO)] }).toEqual({ at, after: boot });
            expect(k.state.files[JOURNAL]).toBeUndefined();
        });
    });

    test("at every point of the batch: destroy again from a new process restores the host's drivers", async () => {
        const ops = await deleteBatch();
        await atEveryPoint(ops, async (n, at) => {
            const k = fakeLabKernel();
            const outs = await upAndCreate(new FakeHost(k));
            await expect(remove(GPU, outs, new DyingHost(new FakeHost(k), n))).rejects.toThrow(/killed after/);
            await remove(GPU, outs, new FakeHost(k));
            expect({ at, after: [state(k, GPU), state(k, AUDIO)] }).toEqual({ at, after: boot });
            expect(k.state.files[JOURNAL]).toBeUndefined();
        });
    });
});

describe("an override nobody recorded", () => {
    let k: FakeKernel;
    let host: FakeHost;
    beforeEach(async () => {
        k = fakeLabKernel();
        host = new FakeHost(k);
        // As a change killed before this package kept a journal leaves it, or `echo vfio-pci > driver_override`.
        await host.run([
            { op: "exec", argv: ["modprobe", "vfio-pci"] },
            { op: "write", path: `/sys/bus/pci/drivers/bochs-drm/unbind`, data: GPU },
            { op: "write", path: `/sys/bus/pci/devices/${GPU}/driver_override`, data: "vfio-pci" },
            { op: "write", path: "/sys/bus/pci/drivers_probe", data: GPU },
        ]);
    });

    test("preview says so, and destroy gives the member back to the kernel's driver matching", async () => {
        const c = await check({}, { device: GPU }, host);
        expect(c.inputs.plan!.slice(0, 2)).toEqual([
            `${GPU} (VGA controller 1234:1111): vfio-pci (override set before us; destroy gives it back to the kernel's driver matching), no change`,
            `${AUDIO} (Audio device 8086:2668): snd_hda_intel → vfio-pci`,
        ]);
        const { outs } = await create(c.inputs, host);
        expect(outs.members[0]).toMatchObject({ previousDriver: null, previousOverride: null, previousProbe: true, driver: "vfio-pci" });
        // A new process destroys from the state alone.
        await remove(GPU, outs, new FakeHost(k));
        expect([state(k, GPU), state(k, AUDIO)]).toEqual(boot);
    });

    test("an override driverctl saved is the host's own: kept on destroy", async () => {
        await host.run([
            { op: "mkdir", path: "/etc/driverctl.d", mode: 0o755 },
            { op: "put", path: `/etc/driverctl.d/pci-${GPU}`, data: "vfio-pci\n", mode: 0o644 },
        ]);
        const outs = await upAndCreate(host);
        expect(outs.plan![0]).toBe(`${GPU} (VGA controller 1234:1111): vfio-pci, no change`);
        await remove(GPU, outs, host);
        expect(state(k, GPU)).toEqual({ driver: "vfio-pci", override: "vfio-pci" });
        expect(state(k, AUDIO)).toEqual(boot[1]);
    });
});

test("a journal that is not ours is refused at preview, naming the file", async () => {
    const k = fakeLabKernel();
    const host = new FakeHost(k);
    await host.run([
        { op: "mkdir", path: JOURNAL_DIR, mode: 0o700 },
        { op: "put", path: JOURNAL, data: `{"address":"${GPU}","members":[{"address":"../../etc","driver":"x","override":null}]}`, mode: 0o600 },
    ]);
    const c = await check({}, { device: GPU }, host);
    expect(c.failures).toEqual([{ property: "device", reason: expect.stringContaining(`${JOURNAL} is not a journal pulumi-vfio wrote`) }]);
});

test("an empty journal (a new journal's in-place write cut short, before the change's first write) is no journal", async () => {
    const k = fakeLabKernel();
    const host = new FakeHost(k);
    await host.run([
        { op: "mkdir", path: JOURNAL_DIR, mode: 0o700 },
        { op: "put", path: JOURNAL, data: "", mode: 0o600 },
    ]);
    const c = await check({}, { device: GPU }, host);
    expect(c.failures).toEqual([]);
    const { outs } = await create(c.inputs, host);
    expect(outs.members.map((m) => m.previousDriver)).toEqual(["bochs-drm", "snd_hda_intel"]);
    expect(JSON.parse(k.read(JOURNAL)).members.map((m: { driver: string }) => m.driver)).toEqual(["bochs-drm", "snd_hda_intel"]);
});

test("the common case stays one batch for create and one for delete", async () => {
    const k = fakeLabKernel();
    const host = new FakeHost(k);
    const c = await check({}, { device: GPU }, host);
    const t0 = host.roundTrips;
    const { outs } = await create(c.inputs, host);
    expect(host.roundTrips - t0).toBe(1);
    const t1 = host.roundTrips;
    await remove(GPU, outs, host);
    expect(host.roundTrips - t1).toBe(1);
    expect(k.state.files[JOURNAL]).toBeUndefined();
});

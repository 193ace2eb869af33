/**
 * MdevInstance's six functions against the fake lab machine (mtty and mbochs as the lab kernel loads them, an
 * NVIDIA vGPU 17+ GPU added where a test needs one): what preview shows and refuses, what up creates and rolls
 * back, what refresh sees, what destroy refuses.
 */
import { FakeHost } from "../fake/host";
import { FakeKernel } from "../fake/kernel";
import { fakeLabKernel } from "../fake/lab";
import { addMdevParent, addNvidiaVgpuGpu, mdev, rebootMdevs } from "../fake/mdev";
import { pci } from "../fake/pci";
import { UNKNOWN } from "../../provider/check";
import { MdevInstanceInputs, MdevInstanceOutputs, check, create, diff, read, remove, update } from "../../provider/mdevInstance";

const U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const U2 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002";

let k: FakeKernel;
let host: FakeHost;
beforeEach(() => {
    k = fakeLabKernel();
    host = new FakeHost(k);
});

const devices = () => Object.keys(mdev(k).devices).sort();
const avail = (parent: string, type: string) => Number(k.read(`/sys/class/mdev_bus/${parent}/mdev_supported_types/${type}/available_instances`).trim());

async function up(inputs: Record<string, unknown>, olds: Partial<MdevInstanceOutputs> = {}): Promise<MdevInstanceOutputs> {
    const c = await check(olds, inputs, host);
    expect(c.failures).toEqual([]);
    return (await create(c.inputs, host)).outs;
}

async function failures(inputs: Record<string, unknown>, olds: Record<string, unknown> = {}) {
    return (await check(olds, inputs, host)).failures;
}

describe("preview", () => {
    test("shows the type chosen and the capacity left, in one round trip (two to choose by vram), and changes nothing", async () => {
        await check({}, { parent: "mbochs", vram: { min: 1 }, uuid: U1 }, host);
        expect(host.roundTrips).toBe(2);
        const c = await check({}, { parent: "mtty", type: "mtty-2", uuid: U1.toUpperCase() }, host);
        expect(host.roundTrips).toBe(3);
        expect(c.failures).toEqual([]);
        expect(c.inputs).toMatchObject({ uuid: U1, parentDevice: "mtty", typeId: "mtty-2", persistent: false, attrs: [] });
        expect(c.inputs.plan).toEqual([`create mdev ${U1} of type mtty-2 (Dual port serial) on mtty; 11 more can be created after it`]);
        expect(devices()).toEqual([]);
    });

    test("vram bounds pick the smallest type that fits, in a stable order", async () => {
        const c = await check({}, { parent: "mbochs", vram: { min: 10 }, uuid: U1 }, host);
        expect(c.inputs.typeId).toBe("mbochs-medium");
        expect((await check({}, { parent: "mbochs", vram: { max: 64 }, uuid: U1 }, host)).inputs.typeId).toBe("mbochs-small");
        expect((await check({}, { parent: "mbochs", vram: { min: 17, max: 64 }, uuid: U1 }, host)).inputs.typeId).toBe("mbochs-large");
    });

    test("vram bounds skip a full type for the next fit; an instance we made keeps its type", async () => {
        const mine = await up({ parent: "mbochs", vram: { min: 10 }, uuid: U1 });
        expect(mine.typeId).toBe("mbochs-medium");
        // Fill the rest of mbochs' 256 MB with medium instances: 15 more.
        for (let i = 0; i < 15; i++) k.write("/sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-medium/create", `00000000-0000-4000-8000-0000000000${String(i).padStart(2, "0")}`);
        expect(avail("mbochs", "mbochs-medium")).toBe(0);
        const again = await check(mine, { parent: "mbochs", vram: { min: 10 }, uuid: U1 }, host);
        expect(again.failures).toEqual([]);
        expect(again.inputs.typeId).toBe("mbochs-medium");
        expect(again.inputs.plan).toEqual([`mdev ${U1} (type mbochs-medium on mbochs) exists, no change`]);
        // A new instance with the same bounds finds every fitting type full.
        expect(await failures({ parent: "mbochs", vram: { min: 10 }, uuid: U2 })).toEqual([
            { property: "vram", reason: expect.stringMatching(/mdev type mbochs-medium on mbochs has no instance left \(available_instances is 0\); no type of mbochs has room now/) },
        ]);
    });

    test("a type without room fails with the types that have room", async () => {
        // 11 dual-port and 1 single-port instances take 23 of mtty's 24 ports.
        for (let i = 0; i < 11; i++) k.write("/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create", `00000000-0000-4000-8000-0000000000${String(i).padStart(2, "0")}`);
        k.write("/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create", "00000000-0000-4000-8000-000000000099");
        const f = await failures({ parent: "mtty", type: "mtty-2", uuid: U1 });
        expect(f).toEqual([
            {
                property: "type",
                reason: "mdev type mtty-2 (Dual port serial) on mtty has no instance left (available_instances is 0); types of mtty with room: mtty-1 (Single port serial): 1 available",
            },
        ]);
    });

    test.each<[string, Record<string, unknown>, string, RegExp]>([
        ["unknown parent", { parent: "nope", type: "mtty-2" }, "parent", /no mdev parent "nope" on this host; mdev parents on this host \(\/sys\/class\/mdev_bus\): mbochs, mtty/],
        ["a PCI device that is no mdev parent", { parent: "01:00.0", type: "x" }, "parent", /0000:01:00.0 is not an mdev parent .* mbochs, mtty/],
        ["a PCI address with no device", { parent: "0000:07:00.0", type: "x" }, "parent", /no mdev parent "0000:07:00.0"/],
        ["a parent name that could walk the tree", { parent: "../mtty", type: "mtty-2" }, "parent", /is not an mdev parent: give a PCI address/],
        ["unknown type", { parent: "mtty", type: "mtty-3" }, "type", /parent mtty has no mdev type "mtty-3"; its types: mtty-1 \(Single port serial\): 24 available; mtty-2 \(Dual port serial\): 12 available/],
        ["vram bounds that match nothing", { parent: "mbochs", vram: { min: 20, max: 30 } }, "vram", /matches no type of mbochs; types and their video memory: mbochs-small 4 MiB, mbochs-medium 16 MiB, mbochs-large 64 MiB/],
        ["vram on a parent whose types state none", { parent: "mtty", vram: { min: 1 } }, "vram", /mtty-1 \(no video memory stated\), mtty-2 \(no video memory stated\)/],
        ["vram min above max", { parent: "mbochs", vram: { min: 64, max: 4 } }, "vram", /vram.min \(64\) is above vram.max \(4\)/],
        ["neither type nor vram", { parent: "mtty" }, "type", /give type .* or vram .*; types of mtty: mtty-1/],
        ["both type and vram", { parent: "mbochs", type: "mbochs-small", vram: { min: 1 } }, "vram", /either type .* or vram .*, not both/],
        ["a malformed UUID", { parent: "mtty", type: "mtty-1", uuid: "not-a-uuid" }, "uuid", /uuid: "not-a-uuid" is not a UUID: write it as 8-4-4-4-12 hex digits/],
        ["an attribute name that could walk the tree", { parent: "mtty", type: "mtty-1", attrs: [{ name: "../remove", value: "1" }] }, "attrs[0].name", /is not an mdev attribute name/],
        ["a property that does not exist", { parent: "mtty", type: "mtty-1", colour: "red" }, "colour", /unknown key "colour" \(allowed here: parent, type, vram/],
    ])("bad input: %s → %s", async (_what, inputs, property, reason) => {
        const f = await failures({ uuid: U1, ...inputs });
        expect(f.find((x) => x.property === property)?.reason).toMatch(reason);
        expect(devices()).toEqual([]);
    });

    test("a UUID already used by an mdev on another parent is refused, naming it", async () => {
        k.write("/sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/create", U1);
        expect(await failures({ parent: "mtty", type: "mtty-1", uuid: U1 })).toEqual([
            { property: "uuid", reason: expect.stringMatching(`UUID ${U1} is already an mdev of type mbochs-small on parent mbochs; UUIDs are unique across parents`) },
        ]);
        expect(devices()).toEqual([U1]);
    });

    test("a UUID used on the same parent with another type (not ours) is refused", async () => {
        k.write("/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create", U1);
        expect((await failures({ parent: "mtty", type: "mtty-2", uuid: U1 }))[0].reason).toMatch(`UUID ${U1} is already an mdev of type mtty-1 on mtty, not mtty-2`);
    });

    test("persistent: true without mdevctl on the host says how to get it", async () => {
        delete k.state.files["/usr/bin/mdevctl"];
        expect(await failures({ parent: "mtty", type: "mtty-1", uuid: U1, persistent: true })).toEqual([
            { property: "persistent", reason: expect.stringMatching(/needs mdevctl on the host \(apt install mdevctl/) },
        ]);
    });

    test("without a uuid (the provider called directly) the previous one is kept, else it is asked for", async () => {
        expect(await failures({ parent: "mtty", type: "mtty-1" })).toEqual([{ property: "uuid", reason: expect.stringMatching(/MdevInstance class derives it/) }]);
        const c = await check({ uuid: U2 }, { parent: "mtty", type: "mtty-1" }, host);
        expect(c.inputs.uuid).toBe(U2);
    });

    test("unknown values in preview are not checked against the host", async () => {
        const c = await check({}, { parent: UNKNOWN, type: "mtty-1", uuid: UNKNOWN }, host);
        expect(c.failures).toEqual([]);
        expect(host.roundTrips).toBe(0);
        expect(c.inputs.typeId).toBeUndefined();
    });
});

describe("up, refresh, destroy", () => {
    test("create makes the mdev with its own IOMMU group and /dev/vfio node; read costs one round trip; delete gives the capacity back", async () => {
        const outs = await up({ parent: "mtty", type: "mtty-2", uuid: U1 });
        expect(outs).toMatchObject({
            uuid: U1,
            parentDevice: "mtty",
            typeId: "mtty-2",
            typeName: "Dual port serial",
            backend: "mdev",
            address: null,
            sysfsPath: `/sys/bus/mdev/devices/${U1}`,
            availableInstances: 11,
            vramMiB: null,
            persistent: false,
            mdevctlConfig: null,
        });
        expect(outs.vfioDevice).toBe(`/dev/vfio/${outs.iommuGroup}`);
        expect(k.stat(outs.vfioDevice)).toMatch(/^character special file/);
        expect(avail("mtty", "mtty-1")).toBe(22);

        const before = host.roundTrips;
        const r = await read(U1, outs, host);
        expect(host.roundTrips - before).toBe(1);
        expect(r).toEqual({ id: U1, props: outs });

        await remove(U1, outs, host);
        expect(devices()).toEqual([]);
        expect(avail("mtty", "mtty-2")).toBe(12);
    });

    test("create is one round trip (the lock, create, read back), delete one, and neither starts a process", async () => {
        const c = await check({}, { parent: "mtty", type: "mtty-1", uuid: U1 }, host);
        // The ops that start a program on a real host (readlink of a sysfs link, reads and writes are builtins).
        const forks = (ops: { op: string }[]) => ops.filter((o) => o.op === "stat" || o.op === "openers" || o.op === "exec").length;
        const seen: { op: string }[][] = [];
        const run = host.run.bind(host);
        host.run = (ops, o) => (seen.push(ops), run(ops, o));
        let t0 = host.roundTrips;
        const outs = (await create(c.inputs, host)).outs;
        expect(host.roundTrips - t0).toBe(1);
        expect(seen.map(forks)).toEqual([0]);
        expect(seen[0][0]).toMatchObject({ op: "write", path: expect.stringMatching(/mtty-1\/create$/), data: U1 });
        seen.length = 0;
        t0 = host.roundTrips;
        await remove(U1, outs, host);
        expect(host.roundTrips - t0).toBe(1);
        // The guard (groupHolders) starts a process only when the group is held.
        expect(seen.map(forks)).toEqual([0]);
        expect(seen[0][0]).toMatchObject({ op: "groupHolders", guard: true });
        expect(devices()).toEqual([]);
    });

    test("a type filled between preview and up: create is refused with the types that have room, and nothing is made", async () => {
        const c = await check({}, { parent: "mtty", type: "mtty-2", uuid: U1 }, host);
        expect(c.failures).toEqual([]);
        for (let i = 0; i < 11; i++) k.write("/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create", `00000000-0000-4000-8000-0000000000${String(i).padStart(2, "0")}`);
        k.write("/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create", "00000000-0000-4000-8000-000000000099");
        const before = devices();
        await expect(create(c.inputs, host)).rejects.toThrow(/mdev type mtty-2 \(Dual port serial\) on mtty has no instance left .*types of mtty with room: mtty-1/);
        expect(devices()).toEqual(before);
    });

    test("a retried create (state lost after the kernel made the device) adopts the instance instead of leaking one", async () => {
        await up({ parent: "mtty", type: "mtty-1", uuid: U1 });
        const c = await check({}, { parent: "mtty", type: "mtty-1", uuid: U1 }, host);
        expect(c.inputs.plan).toEqual([`adopt the existing mdev ${U1} (type mtty-1 (Single port serial) on mtty)`]);
        const outs = (await create(c.inputs, host)).outs;
        expect(outs.uuid).toBe(U1);
        expect(devices()).toEqual([U1]);
        expect(avail("mtty", "mtty-1")).toBe(23);
    });

    test("an attribute write that fails rolls the mdev back and names the file and errno", async () => {
        const c = await check({}, { parent: "mbochs", type: "mbochs-small", uuid: U1, attrs: [{ name: "vendor/memory", value: "8 MB" }] }, host);
        expect(c.failures).toEqual([]);
        await expect(create(c.inputs, host)).rejects.toThrow(
            new RegExp(`creating mdev ${U1} \\(type mbochs-small on mbochs\\) failed: writing "8 MB" to /sys/bus/mdev/devices/${U1}/vendor/memory failed: EACCES .*read-only.* The mdev ${U1} was removed again`),
        );
        expect(devices()).toEqual([]);
        expect(avail("mbochs", "mbochs-small")).toBe(64);
    });

    test("attributes are written in order after create and kept in mdevctl's config", async () => {
        addMdevParent(k, {
            name: "0000:02:00.0",
            driver: "nvidia-vgpu-vfio",
            capacity: 8,
            types: [{ id: "nvidia-63", name: "GRID P40-2Q", description: "num_heads=4, frl_config=60, framebuffer=2048M, max_resolution=7680x4320, max_instance=12", deviceApi: "vfio-pci", cost: 1, writableAttrs: { "nvidia/vgpu_params": "" } }],
        });
        const outs = await up({ parent: "02:00.0", vram: { min: 2048 }, uuid: U1, attrs: [{ name: "nvidia/vgpu_params", value: "frame_rate_limiter=0" }], persistent: true });
        expect(outs).toMatchObject({ parentDevice: "0000:02:00.0", typeId: "nvidia-63", vramMiB: 2048, mdevctlConfig: `/etc/mdevctl.d/0000:02:00.0/${U1}` });
        expect(k.read(`/sys/bus/mdev/devices/${U1}/nvidia/vgpu_params`)).toBe("frame_rate_limiter=0\n");
        expect(JSON.parse(k.read(`/etc/mdevctl.d/0000:02:00.0/${U1}`))).toEqual({ mdev_type: "nvidia-63", start: "auto", attrs: [{ "nvidia/vgpu_params": "frame_rate_limiter=0" }] });
    });

    test("refresh: a removed mdev is gone; one recreated with another type is drift that diff replaces", async () => {
        const outs = await up({ parent: "mtty", type: "mtty-2", uuid: U1 });
        k.write(`/sys/bus/mdev/devices/${U1}/remove`, "1");
        expect(await read(U1, outs, host)).toEqual({ id: "" });

        k.write("/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create", U1);
        const r = await read(U1, outs, host);
        expect(r.props).toMatchObject({ typeId: "mtty-1", typeName: "Single port serial", availableInstances: 23 });
        const c = await check(r.props!, { parent: "mtty", type: "mtty-2", uuid: U1 }, host);
        expect(c.inputs.plan).toEqual([`mdev ${U1} is mtty-1 now: remove it and create it as mtty-2 (Dual port serial)`]);
        expect(diff(U1, r.props!, c.inputs)).toEqual({ changes: true, replaces: ["type"], deleteBeforeReplace: true });
    });

    test("destroy is refused while a VM holds the mdev's group, and succeeds once it has stopped", async () => {
        const outs = await up({ parent: "mtty", type: "mtty-1", uuid: U1 });
        const pid = k.hold(outs.vfioDevice, "qemu-system-x86");
        await expect(remove(U1, outs, host)).rejects.toThrow(
            new RegExp(`refusing to remove mdev ${U1}: /dev/vfio/${outs.iommuGroup} is held open by PID ${pid} \\(qemu-system-x86\\). Stop the VM first`),
        );
        expect(devices()).toEqual([U1]);
        k.release(pid);
        await remove(U1, outs, host);
        expect(devices()).toEqual([]);
    });

    test("destroy of an mdev someone already removed succeeds", async () => {
        const outs = await up({ parent: "mtty", type: "mtty-1", uuid: U1 });
        k.write(`/sys/bus/mdev/devices/${U1}/remove`, "1");
        await remove(U1, outs, host);
        expect(devices()).toEqual([]);
    });
});

describe("persistence with mdevctl", () => {
    test("writes mdevctl's config (0644) and fixes Debian's udev rule, so the mdev comes back after a reboot", async () => {
        const c = await check({}, { parent: "mtty", type: "mtty-2", uuid: U1, persistent: true }, host);
        expect(c.inputs.plan).toEqual([
            `create mdev ${U1} of type mtty-2 (Dual port serial) on mtty; 11 more can be created after it`,
            "write /etc/udev/rules.d/60-mdevctl.rules: the installed /lib/udev/rules.d/60-mdevctl.rules runs /usr/sbin/mdevctl, which does not exist (mdevctl is /usr/bin/mdevctl), so mdevctl would start nothing at boot",
            `write /etc/mdevctl.d/mtty/${U1} (mdevctl, start: auto) so the mdev comes back at boot`,
        ]);
        const outs = (await create(c.inputs, host)).outs;
        expect(outs).toMatchObject({ persistent: true, mdevctlConfig: `/etc/mdevctl.d/mtty/${U1}` });
        expect(k.stat(`/etc/mdevctl.d/mtty/${U1}`)).toMatch(/^regular file 644 /);
        expect(JSON.parse(k.read(`/etc/mdevctl.d/mtty/${U1}`))).toEqual({ mdev_type: "mtty-2", start: "auto", attrs: [] });
        expect(k.read("/etc/udev/rules.d/60-mdevctl.rules")).toContain("/usr/bin/mdevctl start-parent-mdevs %k");

        expect(rebootMdevs(k)).toEqual([U1]);
        const r = await read(U1, outs, host);
        // Same device and type; the group number is whatever the kernel gives it at boot.
        expect(r.props).toEqual({ ...outs, iommuGroup: r.props!.iommuGroup, vfioDevice: `/dev/vfio/${r.props!.iommuGroup}` });
    });

    test("with Debian's rule left as installed, nothing comes back at boot (why the override is written)", async () => {
        k.mkdir("/etc/mdevctl.d/mtty");
        k.put(`/etc/mdevctl.d/mtty/${U1}`, '{"mdev_type": "mtty-1", "start": "auto", "attrs": []}', 0o644);
        expect(rebootMdevs(k)).toEqual([]);
    });

    test("persistent → false removes the config; destroy of a persistent mdev removes it too", async () => {
        const outs = await up({ parent: "mtty", type: "mtty-1", uuid: U1, persistent: true });
        const c = await check(outs, { parent: "mtty", type: "mtty-1", uuid: U1 }, host);
        expect(diff(U1, outs, c.inputs)).toEqual({ changes: true, replaces: [], deleteBeforeReplace: true });
        expect(c.inputs.plan).toContain(`remove /etc/mdevctl.d/mtty/${U1} (no longer persistent)`);
        const upd = (await update(U1, outs, c.inputs, host)).outs;
        expect(upd).toMatchObject({ persistent: false, mdevctlConfig: null });
        expect(() => k.read(`/etc/mdevctl.d/mtty/${U1}`)).toThrow();
        expect(devices()).toEqual([U1]);

        const again = (await update(U1, upd, (await check(upd, { parent: "mtty", type: "mtty-1", uuid: U1, persistent: true }, host)).inputs, host)).outs;
        expect(again.persistent).toBe(true);
        await remove(U1, again, host);
        expect(() => k.read(`/etc/mdevctl.d/mtty/${U1}`)).toThrow();
        expect(devices()).toEqual([]);
    });
});

describe("diff", () => {
    const olds = { parent: "mtty", type: "mtty-1", uuid: U1, parentDevice: "mtty", typeId: "mtty-1", typeName: "Single port serial", attrs: [], persistent: false } as unknown as MdevInstanceOutputs;
    test.each<[string, Partial<MdevInstanceInputs>, { changes: boolean; replaces: string[] }]>([
        ["nothing changed", {}, { changes: false, replaces: [] }],
        ["another type", { type: "mtty-2", typeId: "mtty-2" }, { changes: true, replaces: ["type"] }],
        ["another parent", { parent: "mbochs", parentDevice: "mbochs", type: "mbochs-small", typeId: "mbochs-small" }, { changes: true, replaces: ["parent", "type"] }],
        ["another UUID", { uuid: U2 }, { changes: true, replaces: ["uuid"] }],
        ["the same UUID in upper case", { uuid: U1.toUpperCase() }, { changes: false, replaces: [] }],
        ["attrs", { attrs: [{ name: "x", value: "1" }] }, { changes: true, replaces: ["attrs"] }],
        ["persistent", { persistent: true }, { changes: true, replaces: [] }],
        ["another host", { connection: { host: "gpu-box" } }, { changes: true, replaces: ["connection"] }],
        ["a type unknown in preview", { type: UNKNOWN, typeId: undefined }, { changes: true, replaces: ["type"] }],
    ])("%s", (_what, change, expected) => {
        const news = { parent: "mtty", type: "mtty-1", uuid: U1, parentDevice: "mtty", typeId: "mtty-1", attrs: [], persistent: false, ...change } as MdevInstanceInputs;
        expect(diff(U1, olds, news)).toEqual({ ...expected, deleteBeforeReplace: true });
    });
});

describe("NVIDIA vGPU 17+ (no mdev bus: a type id written to a VF's nvidia/current_vgpu_type)", () => {
    test("a profile by name goes to the first free VF; the next one to the next VF; destroy clears it, refused while a VM holds the VF", async () => {
        const { pf, vfs } = addNvidiaVgpuGpu(k);
        const c = await check({}, { parent: pf, type: "NVIDIA L40S-2Q", uuid: U1 }, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs).toMatchObject({ parentDevice: pf, typeId: "1156" });
        expect(c.inputs.plan).toEqual([`set /sys/bus/pci/devices/${vfs[0]}/nvidia/current_vgpu_type to 1156 (NVIDIA L40S-2Q); 3 more VFs can take it after that`]);
        const a = (await create(c.inputs, host)).outs;
        const group = pci(k).devices[vfs[0]].group;
        expect(a).toMatchObject({ backend: "nvidia-vgpu", address: vfs[0], sysfsPath: `/sys/bus/pci/devices/${vfs[0]}`, typeId: "1156", typeName: "NVIDIA L40S-2Q", vramMiB: 2048, iommuGroup: group, vfioDevice: `/dev/vfio/${group}`, availableInstances: 3 });
        expect(k.read(`/sys/bus/pci/devices/${vfs[0]}/nvidia/current_vgpu_type`)).toBe("1156\n");

        const b = await up({ parent: pf, vram: { min: 2048, max: 2048 }, uuid: U2 });
        expect(b).toMatchObject({ address: vfs[1], typeId: "1156" });
        // Time-sliced vGPUs of one GPU share a size: a 4 GiB profile is not creatable next to 2 GiB ones.
        expect(await failures({ parent: pf, type: "NVIDIA L40S-4Q", uuid: "00000000-0000-4000-8000-000000000001" })).toEqual([
            { property: "type", reason: expect.stringMatching(/no free VF of 0000:41:00.0 can create vGPU type "NVIDIA L40S-4Q"; creatable now: 1156 \(NVIDIA L40S-2Q, 2048 MiB\): 2 available/) },
        ]);

        expect(await read(U1, a, host)).toEqual({ id: U1, props: a });
        const pid = k.hold(a.vfioDevice);
        await expect(remove(U1, a, host)).rejects.toThrow(/refusing to remove the vGPU on 0000:41:00.4: \/dev\/vfio\/\d+ is held open by PID/);
        k.release(pid);
        await remove(U1, a, host);
        expect(k.read(`/sys/bus/pci/devices/${vfs[0]}/nvidia/current_vgpu_type`)).toBe("0\n");
        expect(await read(U1, a, host)).toEqual({ id: "" });
    });

    test("persistence and attrs are refused: mdevctl cannot recreate a vGPU 17+ at boot", async () => {
        const { pf } = addNvidiaVgpuGpu(k);
        const f = await failures({ parent: pf, type: "1156", uuid: U1, persistent: true, attrs: [{ name: "x", value: "1" }] });
        expect(f.map((x) => x.property)).toEqual(["persistent", "attrs"]);
        expect(f[0].reason).toMatch(/not mdevs: mdevctl cannot recreate them at boot/);
    });

    test("a VF can be named directly", async () => {
        const { vfs } = addNvidiaVgpuGpu(k);
        const outs = await up({ parent: vfs[2], type: "1157", uuid: U1 });
        expect(outs).toMatchObject({ address: vfs[2], typeName: "NVIDIA L40S-4Q", vramMiB: 4096 });
    });
});

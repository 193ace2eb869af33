/**
 * The mediated-device kernel contract: what the mdev framework and the kernel's mtty/mbochs samples answer to the
 * writes MdevInstance makes, and MdevInstance itself on top. The same tests run against the fake kernel
 * (mdev.fake.test.ts) and the lab's real kernel (mdev.lab.test.ts); when they disagree, the fake is wrong.
 * Facts from Documentation/driver-api/vfio-mediated-device.rst and what LAB.md records of the 6.1 kernel.
 */
import { Host, Op, OpResult } from "../../provider/host/types";
import { MdevInstanceOutputs, check, create, read, remove } from "../../provider/mdevInstance";

export interface MdevTarget {
    host: Host;
    /** Make a VM hold the mdev's /dev/vfio/<group> (fake: a process; lab: a nested QEMU). Returns how to let go. */
    hold(uuid: string, group: number): Promise<() => Promise<void>>;
}

const BUS = "/sys/class/mdev_bus";
const DEVS = "/sys/bus/mdev/devices";
/** Every UUID these tests make starts like this, so cleanup never touches anyone else's mdev. */
const PREFIX = "c0ffee00-0000-4000-8000-";
const uuid = (n: number) => `${PREFIX}${String(n).padStart(12, "0")}`;
const typeFile = (parent: string, type: string, f: string) => `${BUS}/${parent}/mdev_supported_types/${type}/${f}`;
const w = (path: string, data: string): Op => ({ op: "write", path, data });

async function one(host: Host, op: Op): Promise<OpResult> {
    return (await host.run([op]))[0];
}

async function avail(host: Host, parent: string, type: string): Promise<number> {
    return Number((await one(host, { op: "read", path: typeFile(parent, type, "available_instances") })).data.trim());
}

/** Remove every mdev (and mdevctl config) these tests made, and the udev override the provider may write. */
async function cleanup(host: Host): Promise<void> {
    const list = await one(host, { op: "list", path: DEVS });
    const ours = list.data.split("\n").filter((u) => u.startsWith(PREFIX));
    const cfgs = await host.run([{ op: "list", path: "/etc/mdevctl.d/mtty" }, { op: "list", path: "/etc/mdevctl.d/mbochs" }]);
    const files = cfgs.flatMap((r, i) => r.data.split("\n").filter((u) => u.startsWith(PREFIX)).map((u) => `/etc/mdevctl.d/${["mtty", "mbochs"][i]}/${u}`));
    await host.run([
        ...ours.map((u) => w(`${DEVS}/${u}/remove`, "1")),
        ...files.map((f): Op => ({ op: "remove", path: f })),
        { op: "remove", path: "/etc/udev/rules.d/60-mdevctl.rules" },
    ]);
}

export function mdevContract(describeFn: jest.Describe, target: () => MdevTarget): void {
    describeFn("mdev kernel contract (mtty, mbochs)", () => {
        let host: Host;
        let t: MdevTarget;
        beforeAll(async () => {
            t = target();
            host = t.host;
            await cleanup(host);
        });
        afterEach(() => cleanup(host));

        test("the lab's parents and types: names, descriptions (mtty has none), capacity", async () => {
            const parents = (await one(host, { op: "list", path: BUS })).data.split("\n").filter(Boolean);
            expect(parents).toEqual(expect.arrayContaining(["mbochs", "mtty"]));
            const types: [string, string, string | null, number][] = [
                ["mtty", "mtty-1", null, 24],
                ["mtty", "mtty-2", null, 12],
                ["mbochs", "mbochs-small", "virtual display, 4 MB video memory", 64],
                ["mbochs", "mbochs-medium", "virtual display, 16 MB video memory", 16],
                ["mbochs", "mbochs-large", "virtual display, 64 MB video memory", 4],
            ];
            for (const [p, ty, desc, n] of types) {
                const r = await host.run([
                    { op: "read", path: typeFile(p, ty, "name") },
                    { op: "read", path: typeFile(p, ty, "description") },
                    { op: "read", path: typeFile(p, ty, "device_api") },
                    { op: "read", path: typeFile(p, ty, "available_instances") },
                    { op: "stat", path: typeFile(p, ty, "create") },
                ]);
                expect(r[1].ok ? r[1].data.trim() : null).toBe(desc);
                expect(r[2].data.trim()).toBe("vfio-pci");
                expect(Number(r[3].data.trim())).toBe(n);
                expect(r[4].data).toMatch(/^regular file 200 /);
            }
            const names = await host.run([{ op: "read", path: typeFile("mtty", "mtty-1", "name") }, { op: "read", path: typeFile("mtty", "mtty-2", "name") }]);
            expect(names.map((x) => x.data.trim())).toEqual(["Single port serial", "Dual port serial"]);
        });

        test("create: an upper-case UUID names the device in lower case, with its type, group and /dev/vfio node; instances share the parent's capacity", async () => {
            expect((await one(host, w(typeFile("mtty", "mtty-2", "create"), uuid(1).toUpperCase()))).ok).toBe(true);
            const d = `${DEVS}/${uuid(1)}`;
            const r = await host.run([
                { op: "readlink", path: d },
                { op: "readlink", path: `${d}/mdev_type` },
                { op: "readlink", path: `${d}/iommu_group` },
                { op: "list", path: `${BUS}/mtty/mdev_supported_types/mtty-2/devices` },
                { op: "read", path: `${d}/vendor/sample_mdev_dev` },
            ]);
            // The bus entry is a link to the device under its parent; links come back as physical paths.
            expect(r[0].data.trim()).toBe(`/sys/devices/virtual/mtty/mtty/${uuid(1)}`);
            expect(r[1].data.trim()).toBe("/sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2");
            const group = r[2].data.trim().split("/").pop()!;
            expect(r[2].data.trim()).toBe(`/sys/kernel/iommu_groups/${group}`);
            expect(r[3].data.trim()).toBe(uuid(1));
            expect(r[4].data.trim()).toBe(`This is MDEV ${uuid(1)}`);
            expect((await one(host, { op: "stat", path: `/dev/vfio/${group}` })).data).toMatch(/^character special file 600 /);
            expect([await avail(host, "mtty", "mtty-1"), await avail(host, "mtty", "mtty-2")]).toEqual([22, 11]);
            expect((await one(host, w(`${d}/remove`, "1"))).ok).toBe(true);
            expect((await one(host, { op: "stat", path: `/dev/vfio/${group}` })).errno).toBe("ENOENT");
            expect(await avail(host, "mtty", "mtty-1")).toBe(24);
        });

        test.each<[string, string, () => Op]>([
            ["the same UUID again", "EEXIST", () => w(typeFile("mtty", "mtty-1", "create"), uuid(2))],
            ["the same UUID on another type", "EEXIST", () => w(typeFile("mtty", "mtty-2", "create"), uuid(2))],
            ["the same UUID on another parent", "EEXIST", () => w(typeFile("mbochs", "mbochs-small", "create"), uuid(2))],
            ["a malformed UUID", "EINVAL", () => w(typeFile("mtty", "mtty-1", "create"), "not-a-uuid")],
            ["remove with a non-number", "EINVAL", () => w(`${DEVS}/${uuid(2)}/remove`, "yes")],
            ["a read-only vendor attribute", "EACCES", () => w(`${DEVS}/${uuid(2)}/vendor/sample_mdev_dev`, "x")],
            ["remove of an mdev that does not exist", "ENOENT", () => w(`${DEVS}/${uuid(3)}/remove`, "1")],
        ])("%s → %s", async (_what, errno, op) => {
            expect((await one(host, w(typeFile("mtty", "mtty-1", "create"), uuid(2)))).ok).toBe(true);
            const r = await one(host, op());
            expect(r.ok).toBe(false);
            expect(r.errno).toBe(errno);
        });

        test("remove with 0 is accepted and does nothing", async () => {
            await host.run([w(typeFile("mtty", "mtty-1", "create"), uuid(4))]);
            expect((await one(host, w(`${DEVS}/${uuid(4)}/remove`, "0"))).ok).toBe(true);
            expect((await one(host, { op: "readlink", path: `${DEVS}/${uuid(4)}` })).ok).toBe(true);
        });

        test("no instance left → ENOSPC (mbochs-large takes 64 of 256 MB; the other types run out with it)", async () => {
            const r = await host.run([1, 2, 3, 4, 5].map((i) => w(typeFile("mbochs", "mbochs-large", "create"), uuid(10 + i))));
            expect(r.map((x) => x.ok)).toEqual([true, true, true, true, false]);
            expect(r[4].errno).toBe("ENOSPC");
            expect([await avail(host, "mbochs", "mbochs-small"), await avail(host, "mbochs", "mbochs-medium")]).toEqual([0, 0]);
        });

        test("MdevInstance: preview, create, read (one round trip), destroy", async () => {
            const c = await check({}, { parent: "mtty", type: "mtty-2", uuid: uuid(20) }, host);
            expect(c.failures).toEqual([]);
            expect(c.inputs.plan).toEqual([`create mdev ${uuid(20)} of type mtty-2 (Dual port serial) on mtty; 11 more can be created after it`]);
            const outs = (await create(c.inputs, host)).outs;
            expect(outs).toMatchObject({ uuid: uuid(20), parentDevice: "mtty", typeId: "mtty-2", typeName: "Dual port serial", sysfsPath: `${DEVS}/${uuid(20)}`, availableInstances: 11 });
            expect((await one(host, { op: "stat", path: outs.vfioDevice })).data).toMatch(/^character special file/);
            const before = host.roundTrips;
            expect(await read(outs.uuid, outs, host)).toEqual({ id: outs.uuid, props: outs });
            expect(host.roundTrips - before).toBe(1);
            await remove(outs.uuid, outs, host);
            expect((await one(host, { op: "readlink", path: outs.sysfsPath })).ok).toBe(false);
            expect(await avail(host, "mtty", "mtty-2")).toBe(12);
        });

        test("MdevInstance: vram bounds pick mbochs-medium; a full type fails at preview with the types that have room", async () => {
            expect((await check({}, { parent: "mbochs", vram: { min: 10, max: 32 }, uuid: uuid(30) }, host)).inputs.typeId).toBe("mbochs-medium");
            const fill = [...Array(11).keys()].map((i) => w(typeFile("mtty", "mtty-2", "create"), uuid(31 + i)));
            await host.run([...fill, w(typeFile("mtty", "mtty-1", "create"), uuid(50))]);
            const c = await check({}, { parent: "mtty", type: "mtty-2", uuid: uuid(51) }, host);
            expect(c.failures).toEqual([
                { property: "type", reason: "mdev type mtty-2 (Dual port serial) on mtty has no instance left (available_instances is 0); types of mtty with room: mtty-1 (Single port serial): 1 available" },
            ]);
        });

        test("MdevInstance: a refused attribute write removes the mdev again", async () => {
            const c = await check({}, { parent: "mbochs", type: "mbochs-small", uuid: uuid(60), attrs: [{ name: "vendor/memory", value: "8 MB" }] }, host);
            await expect(create(c.inputs, host)).rejects.toThrow(/vendor\/memory failed: EACCES .* was removed again/);
            expect((await one(host, { op: "readlink", path: `${DEVS}/${uuid(60)}` })).ok).toBe(false);
            expect(await avail(host, "mbochs", "mbochs-small")).toBe(64);
        });

        test("MdevInstance: destroy is refused while a VM holds the mdev, then succeeds", async () => {
            const outs = await createOne(host, { parent: "mtty", type: "mtty-1", uuid: uuid(70) });
            const release = await t.hold(outs.uuid, outs.iommuGroup);
            try {
                await expect(remove(outs.uuid, outs, host)).rejects.toThrow(new RegExp(`refusing to remove mdev ${outs.uuid}: /dev/vfio/${outs.iommuGroup} is held open by PID \\d+ \\(qemu-system-x86\\)`));
                expect((await one(host, { op: "readlink", path: outs.sysfsPath })).ok).toBe(true);
            } finally {
                await release();
            }
            await remove(outs.uuid, outs, host);
            expect((await one(host, { op: "readlink", path: outs.sysfsPath })).ok).toBe(false);
        });

        test("MdevInstance: persistent writes mdevctl's config (0644) and a udev rule that runs the mdevctl that exists", async () => {
            const outs = await createOne(host, { parent: "mtty", type: "mtty-2", uuid: uuid(80), persistent: true });
            const r = await host.run([
                { op: "stat", path: `/etc/mdevctl.d/mtty/${uuid(80)}` },
                { op: "read", path: `/etc/mdevctl.d/mtty/${uuid(80)}` },
                { op: "read", path: "/etc/udev/rules.d/60-mdevctl.rules" },
                { op: "stat", path: "/usr/bin/mdevctl" },
            ]);
            expect(r[0].data).toMatch(/^regular file 644 0 0 /);
            expect(JSON.parse(r[1].data)).toEqual({ mdev_type: "mtty-2", start: "auto", attrs: [] });
            expect(r[2].data).toMatch(/RUN\+="\/bin\/sh -c '\{ \/usr\/bin\/mdevctl start-parent-mdevs %k/);
            expect(r[3].ok).toBe(true);
            await remove(outs.uuid, outs, host);
            expect((await one(host, { op: "read", path: `/etc/mdevctl.d/mtty/${uuid(80)}` })).ok).toBe(false);
        });
    });
}

async function createOne(host: Host, inputs: Record<string, unknown>): Promise<MdevInstanceOutputs> {
    const c = await check({}, inputs, host);
    expect(c.failures).toEqual([]);
    return (await create(c.inputs, host)).outs;
}

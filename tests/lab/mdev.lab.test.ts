/**
 * MdevInstance on a real kernel (the lab VM's mtty and mbochs sample parents), over SSH and with the provider
 * running inside the guest: instances created, read and deleted; capacity exhaustion; a persistent instance brought
 * back by mdevctl after a reboot; delete refused while a nested QEMU holds the mdev.
 */
import { SshHost } from "../../provider/host/ssh";
import { MdevInstanceOutputs, check, create, diff, read, remove } from "../../provider/mdevInstance";
import { guestCall } from "./guest";
import type { LabHandle } from "./lab";
import { labSuite } from "./labState";
import { startNestedQemu, stopNestedQemu } from "./nestedQemu";

const { describe: labDescribe, lab } = labSuite();
const PREFIX = "1ab0d000-0000-4000-8000-";
const uuid = (n: number) => `${PREFIX}${String(n).padStart(12, "0")}`;
const PIDFILE = "/run/pv-mdev-lab.pid";

async function sh(l: LabHandle, argv: string[]): Promise<string> {
    const r = await l.ssh(argv);
    if (r.code !== 0) throw new Error(`${argv.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
}

const exists = async (l: LabHandle, u: string) => (await l.ssh(["test", "-e", `/sys/bus/mdev/devices/${u}`])).code === 0;

labDescribe("MdevInstance on the lab kernel", () => {
    let host: SshHost;
    const l = lab!;

    async function up(inputs: Record<string, unknown>): Promise<MdevInstanceOutputs> {
        const c = await check({}, inputs, host);
        expect(c.failures).toEqual([]);
        return (await create(c.inputs, host)).outs;
    }

    async function cleanup(): Promise<void> {
        await stopNestedQemu(l, PIDFILE);
        await l.ssh([
            "sh",
            "-c",
            `for d in /sys/bus/mdev/devices/${PREFIX}*; do [ -e "$d" ] && echo 1 > "$d/remove"; done; rm -f /etc/mdevctl.d/*/${PREFIX}* /etc/udev/rules.d/60-mdevctl.rules; true`,
        ]);
    }

    beforeAll(async () => {
        host = new SshHost(l.connection);
        await cleanup();
    });
    afterEach(cleanup);
    afterAll(async () => {
        await cleanup();
        await host?.close();
    });

    test("an mtty and an mbochs instance are created, read and deleted; mdevctl lists them as the kernel has them", async () => {
        const tty = await up({ parent: "mtty", type: "mtty-2", uuid: uuid(1) });
        const vga = await up({ parent: "mbochs", vram: { min: 10, max: 32 }, uuid: uuid(2) });
        expect(tty).toMatchObject({ typeId: "mtty-2", typeName: "Dual port serial", availableInstances: 11, vramMiB: null });
        expect(vga).toMatchObject({ typeId: "mbochs-medium", vramMiB: 16, availableInstances: 15 });
        expect(tty.iommuGroup).not.toBe(vga.iommuGroup);
        expect(await sh(l, ["stat", "-c", "%F", vga.vfioDevice])).toMatch(/character special file/);
        const listed = await sh(l, ["mdevctl", "list"]);
        expect(listed).toContain(`${uuid(1)} mtty mtty-2`);
        expect(listed).toContain(`${uuid(2)} mbochs mbochs-medium`);

        for (const o of [tty, vga]) {
            const r = await read(o.uuid, o, host);
            expect(r).toEqual({ id: o.uuid, props: o });
            expect(diff(o.uuid, r.props!, o)).toEqual({ changes: false, replaces: [], deleteBeforeReplace: true });
            await remove(o.uuid, o, host);
            expect(await exists(l, o.uuid)).toBe(false);
        }
        expect((await sh(l, ["cat", "/sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-medium/available_instances"])).trim()).toBe("16");
    });

    test("capacity runs out: four mbochs-large take all 256 MB, and the fifth fails at preview saying no type has room", async () => {
        for (let i = 0; i < 4; i++) await up({ parent: "mbochs", type: "mbochs-large", uuid: uuid(10 + i) });
        const c = await check({}, { parent: "mbochs", type: "mbochs-large", uuid: uuid(14) }, host);
        expect(c.failures).toEqual([{ property: "type", reason: "mdev type mbochs-large on mbochs has no instance left (available_instances is 0); no type of mbochs has room now: remove an instance first" }]);
        const v = await check({}, { parent: "mbochs", vram: { min: 1 }, uuid: uuid(14) }, host);
        expect(v.failures[0]).toMatchObject({ property: "vram", reason: expect.stringMatching(/has no instance left/) });
        expect(await exists(l, uuid(14))).toBe(false);
    });

    test("delete is refused while a nested QEMU holds the mdev (QEMU accepts it), and works once QEMU has stopped", async () => {
        const o = await up({ parent: "mbochs", type: "mbochs-small", uuid: uuid(20) });
        const vm = await startNestedQemu(l, [{ sysfsdev: o.sysfsPath }], PIDFILE);
        expect(vm.code).toBe(0);
        await expect(remove(o.uuid, o, host)).rejects.toThrow(new RegExp(`refusing to remove mdev ${o.uuid}: /dev/vfio/${o.iommuGroup} is held open by PID \\d+ \\(qemu-system-x86\\). Stop the VM first`));
        expect(await exists(l, o.uuid)).toBe(true);
        await stopNestedQemu(l, PIDFILE);
        await remove(o.uuid, o, host);
        expect(await exists(l, o.uuid)).toBe(false);
    });

    test("the provider inside the guest (local host) creates and deletes an mdev", async () => {
        const c = await guestCall(l, "mdevInstance", "check", [{}, { parent: "mtty", type: "mtty-1", uuid: uuid(30) }]);
        expect(c.failures).toEqual([]);
        const { outs } = await guestCall(l, "mdevInstance", "create", [c.inputs]);
        expect(outs).toMatchObject({ uuid: uuid(30), typeId: "mtty-1", availableInstances: 23 });
        expect(await exists(l, uuid(30))).toBe(true);
        await guestCall(l, "mdevInstance", "delete", [outs.uuid, outs]);
        expect(await exists(l, uuid(30))).toBe(false);
    });

    test("persistent: mdevctl brings the instance back after a reboot (with the udev rule fixed); destroy removes its config", async () => {
        const c = await check({}, { parent: "mtty", type: "mtty-2", uuid: uuid(40), persistent: true }, host);
        expect(c.inputs.plan).toEqual(
            expect.arrayContaining([
                expect.stringMatching(/^write \/etc\/udev\/rules.d\/60-mdevctl.rules: the installed \/(usr\/)?lib\/udev\/rules.d\/60-mdevctl.rules runs \/usr\/sbin\/mdevctl, which does not exist \(mdevctl is \/usr\/bin\/mdevctl\)/),
                `write /etc/mdevctl.d/mtty/${uuid(40)} (mdevctl, start: auto) so the mdev comes back at boot`,
            ]),
        );
        const o = (await create(c.inputs, host)).outs;
        expect((await sh(l, ["mdevctl", "list", "-d"])).trim()).toContain(`${uuid(40)} mtty mtty-2 auto`);

        await host.close();
        await l.reboot();
        host = new SshHost(l.connection);
        expect(await exists(l, uuid(40))).toBe(true);
        expect((await sh(l, ["mdevctl", "list"])).trim()).toContain(`${uuid(40)} mtty mtty-2`);
        const r = await read(o.uuid, o, host);
        expect(r.props).toMatchObject({ typeId: "mtty-2", persistent: true });
        expect(diff(o.uuid, r.props!, o).changes).toBe(false);

        await remove(o.uuid, r.props!, host);
        expect(await exists(l, uuid(40))).toBe(false);
        expect((await sh(l, ["mdevctl", "list", "-d"])).trim()).not.toContain(uuid(40));
    });
});

/**
 * PassthroughVm `backend: libvirt` on a real kernel and the lab's real libvirt 9.0 (Debian 12): a persistent domain
 * of the system QEMU driver (`<domain type='qemu'>`, TCG inside the TCG lab guest) with the VGA+audio group bound
 * by IommuBinding, an NVMe VF, an mtty mdev from MdevInstance and a /dev/shm Looking Glass buffer, driven through
 * the provider's check/create/read/update/delete over SshHost. What it proves is what a libvirt user would check by
 * hand: `virsh list` shows the domain running, QEMU's own `query-pci` (through libvirt's monitor) has every passed
 * device, libvirt never moved a driver (managed='no'), a hand edit is drift that up repairs, delete shuts down and
 * undefines it (NVRAM included), and the bindings then release.
 */
import * as binding from "../../provider/iommuBinding";
import * as mdev from "../../provider/mdevInstance";
import { SshHost } from "../../provider/host/ssh";
import { PassthroughVmOutputs, check, create, diff, read, remove, update } from "../../provider/passthroughVm";
import type { LabHandle } from "./lab";
import { OVMF_CODE, OVMF_VARS } from "./lab";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();
const PF = "0000:03:00.0";
const VF = "0000:03:00.1";
const GROUP = ["0000:01:00.0", "0000:01:00.1"];
const MDEV = "5b2a7e10-3c4d-4e5f-8a6b-9c0d1e2f3a4b";
const SHM = "/dev/shm/looking-glass-lv";
const NAME = "lab-domain";
const NVRAM = `/var/lib/libvirt/qemu/nvram/${NAME}_VARS.fd`;

async function sh(l: LabHandle, argv: string[], timeoutMs = 300_000): Promise<string> {
    const r = await l.ssh(argv, { timeoutMs });
    if (r.code !== 0) throw new Error(`${argv.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
}
const virsh = (l: LabHandle, ...args: string[]) => sh(l, ["virsh", "-c", "qemu:///system", ...args]);

/** `virsh qemu-monitor-command --pretty <dom> query-pci`, flattened (bridges' buses included): vendor:device of each. */
async function guestPciIds(l: LabHandle): Promise<string[]> {
    const out = JSON.parse(await virsh(l, "qemu-monitor-command", "--pretty", NAME, '{"execute":"query-pci"}'));
    const ids: string[] = [];
    const walk = (devs: any[]) => {
        for (const d of devs) {
            ids.push(`${d.id.vendor.toString(16).padStart(4, "0")}:${d.id.device.toString(16).padStart(4, "0")}`);
            if (d.pci_bridge?.devices) walk(d.pci_bridge.devices);
        }
    };
    for (const bus of out.return) walk(bus.devices);
    return ids;
}

labDescribe("PassthroughVm backend libvirt on the lab kernel (libvirt 9.0, TCG domain)", () => {
    const l = lab!;
    let host: SshHost;
    const bindings: binding.IommuBindingOutputs[] = [];
    let mtty: mdev.MdevInstanceOutputs | undefined;
    const inputs: Record<string, any> = {
        name: NAME,
        backend: "libvirt",
        accel: "tcg",
        cpu: { cores: 1 },
        memoryMb: 256,
        network: { mode: "none" },
        devices: ["01:00.0", VF],
        mdevs: [{ uuid: MDEV, type: "mtty-2" }],
        sharedMemory: { path: SHM, sizeMb: 32 },
        // No disk, no OS: ACPI shutdown is ignored, so every stop exercises the destroy fallback.
        shutdownTimeoutSeconds: 2,
    };
    const drivers = async () => (await sh(l, ["sh", "-c", [...GROUP, VF].map((a) => `readlink /sys/bus/pci/devices/${a}/driver`).join("; ")])).trim().split("\n").map((p) => p.split("/").pop());
    const ids = async (a: string) => (await sh(l, ["cat", `/sys/bus/pci/devices/${a}/vendor`, `/sys/bus/pci/devices/${a}/device`])).trim().split("\n").map((x) => x.replace(/^0x/, "")).join(":");

    async function bind(device: string) {
        const c = await binding.check({}, { device }, host);
        expect(c.failures).toEqual([]);
        const { outs } = await binding.create(c.inputs, host);
        bindings.push(outs);
        return outs;
    }

    beforeAll(async () => {
        host = new SshHost(l.connection);
        await bind("01:00.0");
        await sh(l, ["sh", "-c", `echo 0 > /sys/bus/pci/devices/${PF}/sriov_drivers_autoprobe && echo 1 > /sys/bus/pci/devices/${PF}/sriov_numvfs`]);
        await bind(VF);
        const m = await mdev.check({}, { parent: "mtty", type: "mtty-2", uuid: MDEV }, host);
        expect(m.failures).toEqual([]);
        mtty = (await mdev.create(m.inputs, host)).outs;
    });

    afterAll(async () => {
        // Leave the guest as found, whatever failed: the domain, the mdev, the bindings (newest first), VFs, buffer.
        await l.ssh(["sh", "-c", `virsh -c qemu:///system destroy ${NAME}; virsh -c qemu:///system undefine --nvram ${NAME}`]).catch(() => undefined);
        if (mtty) await mdev.remove(MDEV, mtty, host).catch(() => l.ssh(["sh", "-c", `echo 1 > /sys/bus/mdev/devices/${MDEV}/remove`]));
        for (const b of [...bindings].reverse()) await binding.remove(b.address, b, host).catch(() => undefined);
        await l.ssh(["sh", "-c", `echo 0 > /sys/bus/pci/devices/${PF}/sriov_numvfs; echo 1 > /sys/bus/pci/devices/${PF}/sriov_drivers_autoprobe; rm -f ${SHM}; rm -rf /run/pulumi-vfio /var/lib/pulumi-vfio`]);
        await host.close();
    });

    let outs: PassthroughVmOutputs;

    test("preview shows the domain XML; up defines and starts it; virsh list shows it running and query-pci has every passed device", async () => {
        expect(await drivers()).toEqual(["vfio-pci", "vfio-pci", "vfio-pci"]);
        const c = await check({}, inputs, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.hostDevices!.map((d) => d.address)).toEqual([...GROUP, VF]);
        expect(c.inputs.domainXml).toContain("<domain type='qemu'>");
        expect(c.inputs.domainXml!.match(/<hostdev mode='subsystem' type='pci' managed='no'>/g)).toHaveLength(3);
        const created = await create(c.inputs, host);
        outs = created.outs;
        expect(outs).toMatchObject({ status: "running", domainDrift: [] });

        expect(await virsh(l, "list", "--name")).toContain(NAME);
        expect((await virsh(l, "domstate", NAME)).trim()).toBe("running");
        // The devices are on the guest's bus once QEMU has realized them: the GPU and its audio function, the VF,
        // mtty's serial card (vendor 4348 device 3253, mtty.c) and the IVSHMEM device (1af4:1110).
        const want = [await ids(GROUP[0]), await ids(GROUP[1]), await ids(VF), "4348:3253", "1af4:1110"];
        expect(want.slice(0, 2)).toEqual(["1234:1111", "8086:2668"]);
        // Devices behind root ports show in query-pci once the guest firmware (SeaBIOS here) has numbered the buses.
        let seen: string[] = [];
        for (let i = 0; i < 120 && !want.every((w) => seen.includes(w)); i++) {
            seen = await guestPciIds(l);
            if (!want.every((w) => seen.includes(w))) await new Promise((r) => setTimeout(r, 1000));
        }
        expect(seen).toEqual(expect.arrayContaining(want));
        // managed='no': libvirt moved no driver at start.
        expect(await drivers()).toEqual(["vfio-pci", "vfio-pci", "vfio-pci"]);
        // QEMU (run by libvirt) holds both groups and the Looking Glass buffer.
        const pid = (await sh(l, ["cat", `/run/libvirt/qemu/${NAME}.pid`])).trim();
        const held = await sh(l, ["sh", "-c", `ls -l /proc/${pid}/fd | grep -o '/dev/vfio/[0-9]*\\|${SHM}' | sort -u`]);
        expect(held.trim().split("\n")).toEqual(expect.arrayContaining([bindings[0].vfioDevice, bindings[1].vfioDevice]));
        expect((await sh(l, ["stat", "-c", "%s", SHM])).trim()).toBe(String(32 * 1024 * 1024));

        const r = await read(NAME, outs, host);
        expect(r.props).toMatchObject({ status: "running", domainDrift: [] });
        const again = await check(outs, inputs, host);
        expect(again.failures).toEqual([]);
        expect(diff(NAME, r.props!, again.inputs).changes).toBe(false);
    });

    test("a hand edit (virsh define of a changed XML: more memory, a hostdev removed) is drift on refresh, and up puts ours back", async () => {
        const xml = await virsh(l, "dumpxml", "--inactive", NAME);
        const edited = xml
            .replace(/<memory unit='KiB'>\d+<\/memory>/, "<memory unit='KiB'>393216</memory>")
            .replace(/<currentMemory unit='KiB'>\d+<\/currentMemory>/, "<currentMemory unit='KiB'>393216</currentMemory>")
            .replace(/\s*<hostdev mode='subsystem' type='pci' managed='no'>\s*<source>\s*<address domain='0x0000' bus='0x03' slot='0x00' function='0x1'\/>[\s\S]*?<\/hostdev>/, "");
        expect(edited).not.toBe(xml);
        await l.ssh(["sh", "-c", "cat > /root/edited.xml"], { input: edited });
        await virsh(l, "define", "/root/edited.xml");

        const r = await read(NAME, outs, host);
        expect(r.props!.domainDrift).toEqual(expect.arrayContaining(["memory", "currentMemory", "devices/hostdev[2]"]));
        const c = await check(outs, inputs, host);
        expect(diff(NAME, r.props!, c.inputs).changes).toBe(true);

        const u = await update(NAME, r.props!, c.inputs, host);
        expect(u.outs).toMatchObject({ status: "running", domainDrift: [] });
        outs = u.outs;
        const back = await virsh(l, "dumpxml", "--inactive", NAME);
        expect(back).toContain("<memory unit='KiB'>262144</memory>");
        expect(back).toContain("bus='0x03' slot='0x00' function='0x1'");
        expect((await read(NAME, outs, host)).props!.domainDrift).toEqual([]);
        // The restart went through a stop and a start: still no driver moved.
        expect(await drivers()).toEqual(["vfio-pci", "vfio-pci", "vfio-pci"]);
    });

    test("stopped by hand (virsh destroy) is drift; up starts it again", async () => {
        await virsh(l, "destroy", NAME);
        expect(await drivers()).toEqual(["vfio-pci", "vfio-pci", "vfio-pci"]);
        const r = await read(NAME, outs, host);
        expect(r.props!.status).toBe("stopped");
        const c = await check(outs, inputs, host);
        expect(diff(NAME, r.props!, c.inputs).changes).toBe(true);
        outs = (await update(NAME, r.props!, c.inputs, host)).outs;
        expect(outs.status).toBe("running");
        expect((await virsh(l, "domstate", NAME)).trim()).toBe("running");
    });

    test("OVMF firmware: up redefines the domain with loader and nvram (libvirt copies the VARS template), restarting it", async () => {
        // The lab image has no ovmf package: this machine's copy (the lab's own firmware, lab.ts) goes in its usual place.
        if ((await l.ssh(["test", "-f", OVMF_CODE])).code !== 0) {
            await l.copyTo(OVMF_CODE, "/usr/share/OVMF");
            await l.copyTo(OVMF_VARS, "/usr/share/OVMF");
        }
        const withFw = { ...inputs, firmware: { code: OVMF_CODE, vars: OVMF_VARS } };
        const c = await check(outs, withFw, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.domainXml).toContain(`<nvram template='${OVMF_VARS}'>${NVRAM}</nvram>`);
        expect(diff(NAME, outs, c.inputs).changes).toBe(true);
        outs = (await update(NAME, outs, c.inputs, host)).outs;
        expect(outs).toMatchObject({ status: "running", domainDrift: [], varsFile: NVRAM });
        expect((await virsh(l, "domstate", NAME)).trim()).toBe("running");
        expect((await sh(l, ["cmp", OVMF_VARS, NVRAM]).catch((e) => String(e)))).toBe("");
        expect((await read(NAME, outs, host)).props!.domainDrift).toEqual([]);
    });

    test("delete shuts the domain down (no OS: destroy after the grace time) and undefines it with its NVRAM; the drivers stayed; the bindings release", async () => {
        await remove(NAME, outs, host);
        expect(await virsh(l, "list", "--all", "--name")).not.toContain(NAME);
        expect((await l.ssh(["test", "-e", NVRAM])).code).not.toBe(0);
        expect(await drivers()).toEqual(["vfio-pci", "vfio-pci", "vfio-pci"]);
        expect((await read(NAME, outs, host)).props!.status).toBe("stopped");

        await mdev.remove(MDEV, mtty!, host);
        mtty = undefined;
        for (const b of [...bindings].reverse()) {
            await binding.remove(b.address, b, host);
            bindings.pop();
        }
        expect((await sh(l, ["readlink", "/sys/bus/pci/devices/0000:01:00.0/driver"])).trim()).toMatch(/bochs-drm$/);
        expect((await sh(l, ["readlink", "/sys/bus/pci/devices/0000:01:00.1/driver"])).trim()).toMatch(/snd_hda_intel$/);
    });
});

/**
 * PassthroughVm with `backend: libvirt`: the domain XML (golden, in libvirt's documented forms: formatdomain's
 * hostdev, shmem, memoryBacking, cputune, features, loader/nvram; Looking Glass's kvmfr form), the drift between
 * it and what libvirt shows, and the lifecycle on the fake machine's virsh (tests/fake/libvirt.ts): define, start,
 * refresh, a hand edit reported and put back, delete; its round trips.
 */
import { FakeHost } from "../fake/host";
import { FakeKernel } from "../fake/kernel";
import { fakeLabKernel } from "../fake/lab";
import { editDomain, installVirsh, powerOff, virshState } from "../fake/libvirt";
import * as binding from "../../provider/iommuBinding";
import * as mdev from "../../provider/mdevInstance";
import { buildDomainXml, domainDrift, parseXml } from "../../provider/libvirt/domainXml";
import { check, create, diff, read, remove, update } from "../../provider/passthroughVm";
import { specOf } from "../../provider/vm/plan";
import { normalize, preflightWant } from "../../provider/vm/spec";

const UUID = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const base = { name: "lab-dom", backend: "libvirt", accel: "tcg", cpu: { cores: 1 }, memoryMb: 128, network: { mode: "none" }, shutdownTimeoutSeconds: 0 };

const LAB_DOMAIN = `<domain type='qemu'>
  <name>lab-dom</name>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='maximum' check='none'>
    <topology sockets='1' dies='1' cores='1' threads='1'/>
  </cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source>
        <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
      </source>
    </hostdev>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source>
        <address domain='0x0000' bus='0x01' slot='0x00' function='0x1'/>
      </source>
    </hostdev>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source>
        <address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/>
      </source>
    </hostdev>
    <hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci'>
      <source>
        <address uuid='${UUID}'/>
      </source>
    </hostdev>
    <shmem name='looking-glass'>
      <model type='ivshmem-plain'/>
      <size unit='M'>32</size>
    </shmem>
    <memballoon model='none'/>
  </devices>
</domain>
`;

const labSpec = (over: Record<string, unknown> = {}) => {
    const n = normalize({ ...base, devices: ["01:00.0", "03:00.1"], mdevs: [{ uuid: UUID, type: "mtty-2" }], sharedMemory: { path: "/dev/shm/looking-glass", sizeMb: 32 }, ...over } as any);
    return { n, spec: specOf(n, [{ address: "0000:01:00.0", group: 8 }, { address: "0000:01:00.1", group: 8 }, { address: "0000:03:00.1", group: 10 }]) };
};

describe("domain XML (pure)", () => {
    test("the lab's domain: TCG, the VGA+audio group and an NVMe VF as managed='no' PCI hostdevs, an mtty mdev, a /dev/shm Looking Glass shmem", () => {
        expect(buildDomainXml(labSpec().spec)).toBe(LAB_DOMAIN);
    });

    test("a Windows gaming VM: KVM, hugepages, vCPU pinning, Error 43's kvm hidden + Hyper-V vendor_id, OVMF loader and nvram from the template", () => {
        const { n, spec } = labSpec({ accel: "kvm", cpu: { cores: 2, pinning: [2, 3] }, hugepages: true, hideHypervisor: true, hvVendorId: "whatever", firmware: { code: "/usr/share/OVMF/OVMF_CODE_4M.ms.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd" } });
        const xml = buildDomainXml(spec, { pinning: n.cpu.pinning, varsTemplate: n.firmware!.vars });
        expect(xml).toMatch(/^<domain type='kvm'>/);
        for (const line of [
            "  <memoryBacking>\n    <hugepages/>\n  </memoryBacking>",
            "  <vcpu placement='static'>2</vcpu>\n  <cputune>\n    <vcpupin vcpu='0' cpuset='2'/>\n    <vcpupin vcpu='1' cpuset='3'/>\n  </cputune>",
            "    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>\n    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/libvirt/qemu/nvram/lab-dom_VARS.fd</nvram>",
            "    <hyperv mode='custom'>\n      <vendor_id state='on' value='whatever'/>\n    </hyperv>\n    <kvm>\n      <hidden state='on'/>\n    </kvm>",
            "  <cpu mode='host-passthrough' check='none'>",
        ]) expect(xml).toContain(line);
    });

    test("a kvmfr buffer is Looking Glass's libvirt form: qemu:commandline -device ivshmem-plain and -object memory-backend-file on /dev/kvmfr0 (size in bytes)", () => {
        const xml = buildDomainXml(labSpec({ sharedMemory: { path: "/dev/kvmfr0", sizeMb: 64 } }).spec);
        expect(xml).toMatch(/^<domain type='qemu' xmlns:qemu='http:\/\/libvirt.org\/schemas\/domain\/qemu\/1.0'>/);
        expect(xml).not.toContain("<shmem");
        const args = parseXml(xml).children.find((c) => c.tag === "qemu:commandline")!.children.map((a) => a.attrs.value);
        expect(args).toEqual(["-device", JSON.stringify({ driver: "ivshmem-plain", id: "shmem0", memdev: "looking-glass" }), "-object", JSON.stringify({ "qom-type": "memory-backend-file", id: "looking-glass", "mem-path": "/dev/kvmfr0", size: 67108864, share: true })]);
    });

    test("the preflight asks libvirt's questions: its <emulator> exists (no QEMU run by us), and no qemu-bridge-helper ACL for a bridge", () => {
        const bridged = { ...base, network: { mode: "bridge", bridge: "br0" } } as any;
        expect(preflightWant(normalize(bridged))).toMatchObject({ bridge: "br0", emulator: "/usr/bin/qemu-system-x86_64", bridgeHelper: false });
        const q = preflightWant(normalize({ ...bridged, backend: "qemu" }));
        expect([q.emulator, q.bridgeHelper]).toEqual([undefined, undefined]);
    });

    test("drift: what libvirt adds is not drift; a changed memory size, a removed hostdev and an added one are", () => {
        const ours = parseXml(LAB_DOMAIN);
        const libvirtShows = LAB_DOMAIN.replace("machine='q35'", "machine='pc-q35-7.2'").replace("<name>lab-dom</name>", "<name>lab-dom</name>\n  <uuid>6f1d1c8e-0000-4000-8000-000000000001</uuid>").replace(/<\/source>\n    <\/hostdev>/g, "</source>\n      <alias name='hostdev0'/>\n      <address type='pci' domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>\n    </hostdev>").replace("<size unit='M'>32</size>", "<size unit='KiB'>32768</size>");
        expect(domainDrift(ours, parseXml(libvirtShows))).toEqual([]);
        const edited = libvirtShows.replace(/131072/g, "262144").replace(/<hostdev mode='subsystem' type='mdev'[\s\S]*?<\/hostdev>\n/, "");
        expect(domainDrift(ours, parseXml(edited))).toEqual(["memory", "currentMemory", "devices/hostdev[3] (missing)"]);
        const added = libvirtShows.replace("<memballoon", "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x00' slot='0x04' function='0x0'/></source></hostdev>\n    <memballoon");
        expect(domainDrift(ours, parseXml(added))).toEqual(["devices/hostdev[4] (not ours)"]);
    });
});

describe("lifecycle on the fake machine's virsh", () => {
    let k: FakeKernel;
    let host: FakeHost;
    const inputs = { ...base, devices: ["01:00.0"], sharedMemory: { path: "/dev/shm/looking-glass", sizeMb: 32 } };
    const driver = (a: string) => k.readlink(`/sys/bus/pci/devices/${a}/driver`).split("/").pop();

    beforeEach(async () => {
        k = installVirsh(fakeLabKernel());
        host = new FakeHost(k);
        const c = await binding.check({}, { device: "01:00.0" }, host);
        await binding.create(c.inputs, host);
    });

    const trips = async <T>(f: () => Promise<T>): Promise<[number, T]> => {
        const t0 = host.roundTrips;
        const v = await f();
        return [host.roundTrips - t0, v];
    };

    test("preview shows the domain XML; create defines and starts it (managed='no': the drivers stay vfio-pci); refresh sees no drift; delete undefines it: 2, 1 and 1 round trips", async () => {
        const c = await check({}, inputs, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.commandLine).toEqual([]);
        expect(c.inputs.domainXml).toContain("<hostdev mode='subsystem' type='pci' managed='no'>");
        const [cr, made] = await trips(() => create(c.inputs, host));
        expect(made.outs).toMatchObject({ status: "running", backend: "libvirt", domainDrift: [], unit: null, qmpSocket: "" });
        expect(virshState(k).log.map((a) => a[0])).toEqual(["domstate", "define", "start"]);
        expect([driver("0000:01:00.0"), driver("0000:01:00.1")]).toEqual(["vfio-pci", "vfio-pci"]);
        // The XML file was written 0600 for define and removed after it.
        expect(k.state.files["/run/pulumi-vfio/vm/lab-dom/domain.xml"]).toBeUndefined();
        const [rd, seen] = await trips(() => read(made.id, made.outs, host));
        expect(seen.props).toMatchObject({ status: "running", domainDrift: [] });
        expect(diff(made.id, seen.props!, (await check(made.outs, inputs, host)).inputs).changes).toBe(false);
        const [rm] = await trips(() => remove(made.id, seen.props!, host));
        expect(virshState(k).domains["lab-dom"]).toBeUndefined();
        // shutdownTimeoutSeconds 0: what a user types, destroy and undefine --nvram, in one batch.
        expect(virshState(k).log.slice(-2)).toEqual([["destroy", "lab-dom"], ["undefine", "--nvram", "lab-dom"]]);
        expect(k.state.files["/run/libvirt/qemu/lab-dom.pid"]).toBeUndefined();
        expect([cr, rd, rm]).toEqual([2, 1, 1]);
        expect([driver("0000:01:00.0"), driver("0000:01:00.1")]).toEqual(["vfio-pci", "vfio-pci"]);
    });

    test("a hand edit (virsh define of a changed XML) and a stopped domain are drift; up defines ours again and starts it", async () => {
        const c = await check({}, inputs, host);
        const { id, outs } = await create(c.inputs, host);
        editDomain(k, "lab-dom", (x) => x.replace(/131072/g, "262144").replace(/<shmem[\s\S]*?<\/shmem>\n/, ""));
        powerOff(k, "lab-dom");
        const seen = (await read(id, outs, host)).props!;
        expect(seen.status).toBe("stopped");
        expect(seen.domainDrift).toEqual(["memory", "currentMemory", "devices/shmem[0] (missing)"]);
        const news = (await check(outs, inputs, host)).inputs;
        expect(diff(id, seen, news).changes).toBe(true);
        const { outs: fixed } = await update(id, seen, news, host);
        expect(fixed).toMatchObject({ status: "running", domainDrift: [] });
        expect((await read(id, fixed, host)).props!.domainDrift).toEqual([]);
    });

    test("a redefinition keeps the UUID libvirt gave the domain (libvirt refuses another under the same name); a changed uuid input undefines first (undefine --keep-nvram) and sets autostart again", async () => {
        const c = await check({}, { ...inputs, autostart: true }, host);
        const { id, outs } = await create(c.inputs, host);
        const given = /<uuid>([^<]+)<\/uuid>/.exec(virshState(k).domains["lab-dom"].xml)![1];
        // A change of memory redefines the domain: under the UUID it has, not a new random one.
        const more = (await check(outs, { ...inputs, autostart: true, memoryMb: 256 }, host)).inputs;
        expect(more.domainXml).not.toContain("<uuid>");
        const { outs: bigger } = await update(id, outs, more, host);
        expect(bigger).toMatchObject({ status: "running", domainDrift: [] });
        expect(virshState(k).domains["lab-dom"].xml).toContain(`<uuid>${given}</uuid>`);
        expect(virshState(k).domains["lab-dom"].xml).toContain("<memory unit='KiB'>262144</memory>");
        // Another uuid input: the old definition goes first (its NVRAM kept), then ours, autostart set again.
        const other = "0b6d9c43-2f1e-4a5b-8c7d-6e5f4a3b2c1d";
        const moved = (await check(bigger, { ...inputs, autostart: true, memoryMb: 256, uuid: other }, host)).inputs;
        const at = virshState(k).log.length;
        const { outs: renamed } = await update(id, bigger, moved, host);
        expect(renamed).toMatchObject({ status: "running", domainDrift: [] });
        expect(virshState(k).log.slice(at).map((a) => a.join(" "))).toEqual(expect.arrayContaining(["undefine --keep-nvram lab-dom", "define /run/pulumi-vfio/vm/lab-dom/domain.xml", "autostart lab-dom", "start lab-dom"]));
        expect(virshState(k).domains["lab-dom"].xml).toContain(`<uuid>${other}</uuid>`);
        expect(k.state.files["/etc/libvirt/qemu/autostart/lab-dom.xml"]).toBeDefined();
    });

    test("delete with a grace time asks the guest first (virsh shutdown), then destroys; a domain already gone is no error", async () => {
        const c = await check({}, { ...inputs, shutdownTimeoutSeconds: 1 }, host);
        const { id, outs } = await create(c.inputs, host);
        const at = virshState(k).log.length;
        await remove(id, outs, host);
        expect(virshState(k).log.slice(at).map((a) => a[0])).toEqual(["domstate", "shutdown", ...Array(virshState(k).log.length - at - 4).fill("domstate"), "destroy", "undefine"]);
        expect(virshState(k).domains["lab-dom"]).toBeUndefined();
        await expect(remove(id, outs, host)).resolves.toBeUndefined();
        await expect(remove(id, { ...outs, shutdownTimeoutSeconds: 0 }, host)).resolves.toBeUndefined();
    });

    test("a QEMU that destroy cannot end (D state on a vfio device) is not undefined into a transient domain that still runs: delete fails and says why", async () => {
        const c = await check({}, inputs, host);
        const { id, outs } = await create(c.inputs, host);
        virshState(k).domains["lab-dom"].stuck = true;
        await expect(remove(id, outs, host)).rejects.toThrow(/VM lab-dom: still running after virsh destroy lab-dom: Failed to destroy domain 'lab-dom': Failed to terminate process \d+ with SIGKILL: Device or resource busy/);
        expect(virshState(k).domains["lab-dom"]).toMatchObject({ state: "running", persistent: true });
        expect(virshState(k).log.at(-1)![0]).toBe("destroy");
        // The same with a grace time: shutdown ignored, destroy fails, no undefine.
        await expect(remove(id, { ...outs, shutdownTimeoutSeconds: 1 }, host)).rejects.toThrow(/still running after virsh destroy lab-dom/);
        expect(virshState(k).domains["lab-dom"]).toMatchObject({ state: "running", persistent: true });
        expect(virshState(k).log.at(-1)![0]).toBe("destroy");
    });

    test("autostart is libvirt's (virsh autostart), and running: false shuts the domain off", async () => {
        const c = await check({}, { ...inputs, autostart: true }, host);
        const { id, outs } = await create(c.inputs, host);
        expect(k.state.files["/etc/libvirt/qemu/autostart/lab-dom.xml"]).toBeDefined();
        const stop = (await check(outs, { ...inputs, autostart: false, running: false }, host)).inputs;
        const { outs: stopped } = await update(id, outs, stop, host);
        expect(stopped.status).toBe("stopped");
        expect(k.state.files["/etc/libvirt/qemu/autostart/lab-dom.xml"]).toBeUndefined();
        expect(virshState(k).domains["lab-dom"].state).toBe("shut off");
    });

    test("a start that fails leaves no domain behind, and says why", async () => {
        const c = await check({}, inputs, host);
        // The binding goes away between preview and up: libvirt would have to rebind, which managed='no' forbids.
        k.write("/sys/bus/pci/devices/0000:01:00.1/driver/unbind", "0000:01:00.1");
        await expect(create(c.inputs, host)).rejects.toThrow(/cannot start: .*0000:01:00.1 is bound to no driver, not vfio-pci/);
        expect(virshState(k).domains["lab-dom"]).toBeUndefined();
    });

    test("a domain of that name this stack did not define is refused, not taken over", async () => {
        const c = await check({}, inputs, host);
        await create(c.inputs, host);
        await expect(create(c.inputs, host)).rejects.toThrow(/a libvirt domain named lab-dom is already defined .* this stack did not define it/);
    });

    test("xVga has no libvirt form: refused at preview, naming the field", async () => {
        const c = await check({}, { ...inputs, devices: [{ address: "01:00.0", xVga: true }] }, host);
        expect(c.failures).toEqual([expect.objectContaining({ property: "devices[0].xVga" })]);
    });
});

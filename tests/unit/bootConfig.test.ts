/**
 * BootConfig against the fake lab machine with Debian's GRUB (or systemd-boot) and initramfs-tools: the preview
 * names every line that changes and touches nothing; up writes and regenerates; a reboot brings the parameters and
 * the early binding; destroy gives the host its own boot back byte for byte; a failing regeneration restores every
 * file; the refusals name the field.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { FakeHost } from "../fake/host";
import { FakeKernel } from "../fake/kernel";
import { fakeLabKernel } from "../fake/lab";
import { pci } from "../fake/pci";
import { addGrubBoot, addSystemdBoot, boot, failCommand, reboot } from "../fake/boot";
import { useFakeMachine } from "../fake/register";
import { UNKNOWN } from "../../provider/check";
import { BootConfigOutputs, check, create, diff, read, remove, update } from "../../provider/bootConfig";
import { applyParameters, missingParameters, parameterProblem, splitCmdline, vendorWarnings } from "../../provider/boot/cmdline";

const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";
const DROPIN = "/etc/default/grub.d/zz-pulumi-vfio.cfg";
let k: FakeKernel;
let host: FakeHost;
beforeEach(() => {
    k = addGrubBoot(fakeLabKernel());
    host = new FakeHost(k);
});

const driverOf = (a: string) => pci(k).devices[a].driver;
const file = (p: string) => k.state.files[p]?.data;

async function up(inputs: Record<string, unknown>): Promise<BootConfigOutputs> {
    const c = await check({}, inputs, host);
    expect(c.failures).toEqual([]);
    return (await create(c.inputs, host)).outs;
}

describe("the command line as data", () => {
    test.each<[string, string[]]>([
        ['BOOT_IMAGE=/vmlinuz root=/dev/vda ro quiet', ["BOOT_IMAGE=/vmlinuz", "root=/dev/vda", "ro", "quiet"]],
        ['a  b\tc\n', ["a", "b", "c"]],
        ['dyndbg="file x.c +p" quiet', ['dyndbg="file x.c +p"', "quiet"]],
    ])("splitCmdline(%j)", (text, words) => expect(splitCmdline(text)).toEqual(words));

    test.each<[string[], string[], string[], string[]]>([
        [["ro", "quiet"], ["intel_iommu=on", "iommu=pt"], [], ["ro", "quiet", "intel_iommu=on", "iommu=pt"]],
        // The user's own identical parameter is not doubled; their other value is followed by ours (the kernel takes the last).
        [["iommu=pt", "quiet"], ["iommu=pt"], [], ["iommu=pt", "quiet"]],
        [["iommu=soft", "quiet"], ["iommu=pt"], [], ["iommu=soft", "quiet", "iommu=pt"]],
        // Removal takes every occurrence of the name, dashes and underscores alike.
        [["nomodeset", "quiet", "kvm.ignore-msrs=0"], ["kvm.ignore_msrs=1"], ["nomodeset", "kvm.ignore_msrs"], ["quiet", "kvm.ignore_msrs=1"]],
    ])("applyParameters(%j, add %j, remove %j)", (current, add, rm, out) => expect(applyParameters(current, add, rm)).toEqual(out));

    test("missingParameters says what the running kernel lacks", () => {
        expect(missingParameters(["root=/dev/vda", "iommu=soft", "nomodeset"], ["intel_iommu=on", "iommu=pt"], ["nomodeset"])).toEqual(["intel_iommu=on missing", "iommu=soft instead of iommu=pt", "nomodeset present"]);
        expect(missingParameters(["intel_iommu=on", "iommu=pt"], ["intel_iommu=on", "iommu=pt"], ["nomodeset"])).toEqual([]);
    });

    test.each<[string, RegExp | undefined]>([
        ["intel_iommu=on", undefined],
        ["video=efifb:off", undefined],
        ["vfio-pci.ids=10de:2204,10de:1aef", undefined],
        ["hugepagesz=1G hugepages=8", /white space: give each parameter as its own item/],
        ['quiet"', /quote or shell character/],
        ["a=$(reboot)", /quote or shell character/],
        ["x\ny", /white space/],
        ["=on", /not a kernel parameter/],
    ])("parameterProblem(%j)", (p, problem) => {
        const why = parameterProblem(p);
        if (problem) expect(why).toMatch(problem);
        else expect(why).toBeUndefined();
    });

    test("the other CPU vendor's IOMMU parameter is a warning", () => {
        expect(vendorWarnings(["amd_iommu=on"], "GenuineIntel")).toEqual(["warning: amd_iommu has no effect on this Intel CPU (GenuineIntel): use intel_iommu=on"]);
        expect(vendorWarnings(["intel_iommu=on"], "AuthenticAMD")[0]).toMatch(/intel_iommu has no effect on this AMD CPU/);
        expect(vendorWarnings(["intel_iommu=on"], "GenuineIntel")).toEqual([]);
    });
});

describe("GRUB (Debian drop-in)", () => {
    const inputs = { kernelParameters: ["intel_iommu=on", "iommu=pt"], earlyBinding: [GPU, AUDIO] };

    test("preview lists the exact lines of each file, the commands and that a reboot is needed, and changes nothing", async () => {
        const before = JSON.stringify(k.state.files);
        const c = await check({}, inputs, host);
        expect(c.failures).toEqual([]);
        const plan = c.inputs.plan!;
        expect(plan).toContain(`${DROPIN}: new file`);
        expect(plan).toContain(`${DROPIN}: + GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT intel_iommu=on iommu=pt"`);
        expect(plan).toContain("/boot/grub/grub.cfg (regenerated): - root=UUID=f00d ro quiet");
        expect(plan).toContain("/boot/grub/grub.cfg (regenerated): + root=UUID=f00d ro quiet intel_iommu=on iommu=pt");
        expect(plan).toContain("/etc/modprobe.d/pulumi-vfio.conf: + softdep bochs pre: vfio_pci");
        expect(plan).toContain("/etc/modprobe.d/pulumi-vfio.conf: + softdep snd_hda_intel pre: vfio_pci");
        expect(plan).toContain("/usr/local/sbin/pulumi-vfio-claim: + for dev in 0000:01:00.0 0000:01:00.1; do");
        expect(plan).toContain("run: update-initramfs -u -k all");
        expect(plan).toContain("run: /usr/sbin/update-grub");
        expect(plan.find((l) => l.startsWith("reboot needed"))).toMatch(/intel_iommu=on missing; running kernel: iommu=pt missing; 0000:01:00.0 is on bochs-drm, not vfio-pci; 0000:01:00.1 is on snd_hda_intel, not vfio-pci/);
        expect(JSON.stringify(k.state.files)).toBe(before);
        // Only questions were asked: which boot loader, which modules match the devices.
        const queries = k.state.execLog.map((a) => a.join(" ")).filter((c) => !/^(\S*bootctl (is-installed|list)|\S*grubby --info=DEFAULT|modprobe -R)( |$)/.test(c));
        expect(queries).toEqual([]);
    });

    test("up writes and regenerates, pendingReboot until a reboot; after it the parameters run and the pair is on vfio-pci from boot", async () => {
        const grubCfgBefore = file("/boot/grub/grub.cfg");
        const outs = await up(inputs);
        expect(outs.loader).toBe("grub");
        expect(outs.initramfs).toBe("initramfs-tools");
        expect(outs.configured).toEqual(["root=UUID=f00d", "ro", "quiet", "intel_iommu=on", "iommu=pt"]);
        expect(outs.pendingReboot).toBe(true);
        expect(file("/boot/grub/grub.cfg")).not.toBe(grubCfgBefore);
        expect(file("/etc/modprobe.d/pulumi-vfio.conf")).toContain("install vfio_pci /usr/local/sbin/pulumi-vfio-claim; /sbin/modprobe --ignore-install vfio_pci $CMDLINE_OPTS");
        expect(k.state.files["/usr/local/sbin/pulumi-vfio-claim"].mode).toBe(0o755);
        expect(k.state.files["/etc/initramfs-tools/hooks/pulumi-vfio"].data).toContain("force_load vfio_pci");
        // The user's own file is never touched.
        expect(file("/etc/default/grub")).toContain('GRUB_CMDLINE_LINUX_DEFAULT="quiet"');
        expect(driverOf(GPU)).toBe("bochs-drm");

        reboot(k);
        const after = (await read("boot", outs, host)).props!;
        expect(after.running).toEqual(expect.arrayContaining(["intel_iommu=on", "iommu=pt"]));
        expect(after.pendingReboot).toBe(false);
        expect([driverOf(GPU), driverOf(AUDIO)]).toEqual(["vfio-pci", "vfio-pci"]);
        // The console GPU with the same ids (1234:1111) stays with bochs-drm: claimed by address, not by id.
        expect(driverOf("0000:00:01.0")).toBe("bochs-drm");
        expect(diff("boot", after, inputs).changes).toBe(false);
    });

    test("destroy removes every file we wrote and regenerates: grub.cfg is byte-equal to before, and a reboot gives the host its drivers", async () => {
        const grubCfgBefore = file("/boot/grub/grub.cfg");
        const filesBefore = Object.keys(k.state.files).sort();
        const outs = await up(inputs);
        reboot(k);
        await remove("boot", outs, host);
        expect(file("/boot/grub/grub.cfg")).toBe(grubCfgBefore);
        expect(Object.keys(k.state.files).sort()).toEqual(filesBefore);
        reboot(k);
        expect(boot(k).cmdline).not.toMatch(/intel_iommu/);
        expect([driverOf(GPU), driverOf(AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
    });

    test("a failing regeneration restores every file and names the command and what it printed", async () => {
        const grubCfgBefore = file("/boot/grub/grub.cfg");
        const filesBefore = JSON.stringify(Object.keys(k.state.files).sort());
        failCommand(k, "update-grub", "/usr/sbin/grub-probe: error: failed to get canonical path of `/dev/root'.");
        const c = await check({}, inputs, host);
        await expect(create(c.inputs, host)).rejects.toThrow(
            "boot configuration not applied: `/usr/sbin/update-grub` failed (exit 1): /usr/sbin/grub-probe: error: failed to get canonical path of `/dev/root'.. Every file was put back as it was",
        );
        expect(JSON.stringify(Object.keys(k.state.files).sort())).toBe(filesBefore);
        expect(file("/boot/grub/grub.cfg")).toBe(grubCfgBefore);
        expect(file(DROPIN)).toBeUndefined();
    });

    test("removing a parameter the user set takes it off the generated line, keeps their file, and destroy brings it back", async () => {
        k = addGrubBoot(fakeLabKernel(), { cmdlineDefault: "quiet nomodeset" });
        host = new FakeHost(k);
        const outs = await up({ removeKernelParameters: ["nomodeset"], kernelParameters: ["iommu=pt"] });
        expect(outs.configured).toEqual(["root=UUID=f00d", "ro", "quiet", "iommu=pt"]);
        expect(file("/etc/default/grub")).toContain("quiet nomodeset");
        await remove("boot", outs, host);
        expect(file("/boot/grub/grub.cfg")).toMatch(/ro quiet nomodeset\n/);
    });

    test("update: a parameter dropped from the program leaves the line; drift of our file is repaired", async () => {
        const outs = await up(inputs);
        const c = await check(outs, { kernelParameters: ["intel_iommu=on"] }, host);
        expect(c.failures).toEqual([]);
        expect(diff("boot", outs, c.inputs).changes).toBe(true);
        const next = (await update("boot", outs, c.inputs, host)).outs;
        expect(next.configured).toEqual(["root=UUID=f00d", "ro", "quiet", "intel_iommu=on"]);
        // The early-binding files go with the input that asked for them.
        expect(file("/usr/local/sbin/pulumi-vfio-claim")).toBeUndefined();

        k.state.files[DROPIN].data = "# edited by hand\n";
        const refreshed = (await read("boot", next, host)).props!;
        expect(diff("boot", refreshed, { kernelParameters: ["intel_iommu=on"] }).changes).toBe(true);
        const repaired = (await update("boot", refreshed, { kernelParameters: ["intel_iommu=on"] }, host)).outs;
        expect(file(DROPIN)).toBe(repaired.written[DROPIN]);
    });

    test("module options go to our modprobe.d file, load to modules-load.d; a loaded module with another value is pending", async () => {
        const outs = await up({ modules: [{ name: "kvm", options: { ignore_msrs: 1, report_ignored_msrs: false }, load: true }] });
        expect(file("/etc/modprobe.d/pulumi-vfio.conf")).toContain("options kvm ignore_msrs=1 report_ignored_msrs=0");
        expect(file("/etc/modules-load.d/pulumi-vfio.conf")).toMatch(/^kvm$/m);
        expect(outs.pendingReboot).toBe(false);
    });
});

describe("systemd-boot", () => {
    beforeEach(() => {
        k = addSystemdBoot(fakeLabKernel());
        host = new FakeHost(k);
    });

    test("writes /etc/kernel/cmdline from the running line plus ours, runs kernel-install, and destroy takes the file away again", async () => {
        const outs = await up({ kernelParameters: ["intel_iommu=on", "iommu=pt"] });
        expect(outs.loader).toBe("systemd-boot");
        expect(file("/etc/kernel/cmdline")).toBe("root=UUID=f00d ro quiet intel_iommu=on iommu=pt\n");
        expect(k.state.execLog).toContainEqual(["/usr/bin/kernel-install", "add", "6.1.0-fake-amd64", "/boot/vmlinuz-6.1.0-fake-amd64", "/boot/initrd.img-6.1.0-fake-amd64"]);
        expect(outs.configured).toEqual(["root=UUID=f00d", "ro", "quiet", "intel_iommu=on", "iommu=pt"]);
        expect(outs.pendingReboot).toBe(true);
        await remove("boot", outs, host);
        expect(file("/etc/kernel/cmdline")).toBeUndefined();
        expect(k.state.ext.sdboot.options).toBe("root=UUID=f00d ro quiet");
    });
});

describe("systemd-boot with Debian's initramfs hook", () => {
    beforeEach(() => {
        k = addSystemdBoot(fakeLabKernel(), { initramfsHook: true });
        host = new FakeHost(k);
    });

    test("the preview shows the entry's options before and after; update-initramfs's own hook rewrites the entry, so kernel-install is not run twice", async () => {
        const c = await check({}, { kernelParameters: ["iommu=pt"], earlyBinding: [GPU, AUDIO] }, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan).toEqual(
            expect.arrayContaining([
                "/efi/loader/entries/fake-6.1.0-fake-amd64.conf (regenerated): - options root=UUID=f00d ro quiet",
                "/efi/loader/entries/fake-6.1.0-fake-amd64.conf (regenerated): + options root=UUID=f00d ro quiet iommu=pt",
                "run: update-initramfs -u -k all",
            ]),
        );
        expect(c.inputs.plan!.filter((l) => l.includes("kernel-install"))).toEqual([]);
        const outs = (await create(c.inputs, host)).outs;
        expect(k.state.execLog.filter((a) => a[0].endsWith("kernel-install"))).toEqual([]);
        expect(k.state.ext.sdboot.options).toBe("root=UUID=f00d ro quiet iommu=pt");
        expect(outs.configured).toEqual(["root=UUID=f00d", "ro", "quiet", "iommu=pt"]);
    });

    test("refresh reads the entry bootctl lists: one kernel-install by hand from another command line is drift", async () => {
        const outs = await up({ kernelParameters: ["iommu=pt"] });
        // The user's own kernel-install run from an edited /etc/kernel/cmdline.
        k.state.ext.sdboot.options = "root=UUID=f00d ro";
        const r = await read("boot", outs, host);
        expect(r.props!.configured).toEqual(["root=UUID=f00d", "ro"]);
        expect(r.props!.pending).toContain("configured command line: iommu=pt missing");
    });
});

describe("refused at preview, naming the field, nothing written", () => {
    test.each<[string, Record<string, unknown>, string, RegExp]>([
        ["a parameter with a space", { kernelParameters: ["hugepagesz=1G hugepages=8"] }, "kernelParameters", /kernelParameters\[0\]: "hugepagesz=1G hugepages=8" contains white space/],
        ["a parameter with a quote", { kernelParameters: ['quiet"'] }, "kernelParameters", /kernelParameters\[0\]: "quiet\\"" contains a quote/],
        ["a parameter with a newline", { kernelParameters: ["iommu=pt\ninit=/bin/sh"] }, "kernelParameters", /contains white space/],
        ["a device that does not exist", { earlyBinding: ["0000:0a:00.0"] }, "earlyBinding", /no PCI device 0000:0a:00.0 on this host/],
        ["vfio-pci.ids taking the console GPU's twin", { kernelParameters: ["vfio-pci.ids=1234:1111"], earlyBinding: [GPU] }, "kernelParameters", /would also take 0000:00:01.0 \(1234:1111, on bochs-drm\), which the host uses.*earlyBinding instead/],
        ["a reboot of the machine pulumi runs on", { kernelParameters: ["iommu=pt"], reboot: "ifNeeded" }, "reboot", /needs an SSH connection/],
        ["kvmfr's options", { modules: [{ name: "kvmfr", options: { static_size_mb: 64 } }] }, "modules", /declare a KvmfrDevice instead/],
    ])("%s", async (_what, inputs, property, reason) => {
        const before = JSON.stringify(k.state.files);
        const c = await check({}, inputs, host);
        expect(c.failures.map((f) => f.property)).toContain(property);
        expect(c.failures.find((f) => f.property === property)!.reason).toMatch(reason);
        expect(JSON.stringify(k.state.files)).toBe(before);
    });

    test("an unknown boot loader lists what was looked for", async () => {
        k = fakeLabKernel();
        addGrubBoot(k);
        delete k.state.files["/usr/sbin/update-grub"];
        delete k.state.files["/usr/sbin/grub-mkconfig"];
        host = new FakeHost(k);
        const c = await check({}, { kernelParameters: ["iommu=pt"] }, host);
        expect(c.failures).toEqual([
            {
                property: "bootloader",
                reason: expect.stringMatching(/no supported boot loader found on this host; looked for systemd-boot \(`bootctl is-installed` succeeds, with kernel-install\); grubby \(\/usr\/sbin\/grubby\); GRUB with Debian's drop-ins/),
            },
        ]);
    });

    test("a host driver built into the kernel cannot be preceded", async () => {
        pci(k).drivers["bochs-drm"].builtin = true;
        const c = await check({}, { earlyBinding: [GPU] }, host);
        expect(c.failures[0]).toEqual({ property: "earlyBinding", reason: expect.stringMatching(/0000:01:00.0's driver bochs-drm is built into the kernel/) });
    });

    test("amd_iommu on an Intel CPU passes with a warning in the plan", async () => {
        const c = await check({}, { kernelParameters: ["amd_iommu=on"] }, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan).toContain("warning: amd_iommu has no effect on this Intel CPU (GenuineIntel): use intel_iommu=on");
    });

    test("preview with values not known yet reads nothing and fails nothing", async () => {
        const c = await check({}, { kernelParameters: [UNKNOWN], earlyBinding: UNKNOWN }, host);
        expect(c.failures).toEqual([]);
        expect(host.roundTrips).toBe(0);
    });
});

describe("reboot: ifNeeded over SSH", () => {
    let dir: string;
    beforeEach(() => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-boot-"));
    });
    afterEach(() => {
        useFakeMachine(undefined);
        fs.rmSync(dir, { recursive: true, force: true });
    });

    test("reboots, waits for another boot id and verifies /proc/cmdline and the early bindings", async () => {
        const state = path.join(dir, "machine.json");
        fs.writeFileSync(state, JSON.stringify(addGrubBoot(fakeLabKernel()).state));
        useFakeMachine(state);
        const inputs = { kernelParameters: ["intel_iommu=on"], earlyBinding: [GPU, AUDIO], reboot: "ifNeeded", rebootTimeout: 30, connection: { host: "gpu-box.lan" } };
        const c = await check({}, inputs);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan!.find((l) => l.startsWith("reboot needed"))).toMatch(/^reboot needed \(pulumi up reboots the host\)/);
        const outs = (await create(c.inputs)).outs;
        expect(outs.pendingReboot).toBe(false);
        expect(outs.running).toContain("intel_iommu=on");
        const after = fakeLabKernel(JSON.parse(fs.readFileSync(state, "utf8")));
        expect(boot(after).bootId).toBe(2);
        expect([pci(after).devices[GPU].driver, pci(after).devices[AUDIO].driver]).toEqual(["vfio-pci", "vfio-pci"]);
    }, 30_000);
});

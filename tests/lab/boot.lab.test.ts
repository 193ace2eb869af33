/**
 * BootConfig through real boot loaders, GRUB and systemd-boot. Each part boots its own lab VM the way a real host boots
 * (OVMF → the ESP's GRUB → the guest's /boot/grub/grub.cfg, see tests/lab/lab.ts `boot: "grub"`), without intel_iommu=on iommu=pt on its
 * command line (Debian's 6.1 kernel turns the emulated VT-d on by itself, so its groups exist anyway), and drives the
 * real dynamic-provider plugin over SSH as `pulumi` would:
 * 1. preview shows the lines and changes nothing;
 * 2. up (reboot: ifNeeded) writes the drop-in and the early binding, regenerates the initramfs and grub.cfg, reboots
 *    through GRUB and verifies: /proc/cmdline has intel_iommu=on iommu=pt, the IOMMU is on, the GPU + audio pair is
 *    on vfio-pci from boot and bochs-drm never bound 01:00.0 (the console GPU, same ids, keeps it);
 * 3. a failing regeneration (update-grub exits 1) puts every file back and names the command and its stderr;
 * 4. destroy, then a reboot: the host is as before, grub.cfg byte-equal to the one before the first up.
 * Then the same through systemd-boot (`boot: "sdboot"`: OVMF → systemd-boot on its own ESP, the guest's /efi → the
 * loader entry kernel-install writes from /etc/kernel/cmdline), with the reboot done by hand (reboot: never) so that
 * pendingReboot is seen true first: preview, up, reboot, verify, destroy, reboot, /etc/kernel/cmdline and the loader
 * entry byte-equal to before. The fault case is GRUB's only (the restore path is the same code).
 * The other lab tests stay on the fast -kernel path (the VM of globalSetup).
 */
import { SshHost } from "../../provider/host/ssh";
import type { Host } from "../../provider/host/types";
import { Engine, PluginProcess, ResourceDecl } from "../engine/harness";
import { LabVm, bootLab } from "./lab";
import { labSuite } from "./labState";

const { describe: labDescribe } = labSuite();
const TYPE = "pulumi-nodejs:dynamic/vfio:BootConfig";
const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";
const DROPIN = "/etc/default/grub.d/zz-pulumi-vfio.cfg";
const OURS = [DROPIN, "/etc/modprobe.d/pulumi-vfio.conf", "/usr/local/sbin/pulumi-vfio-claim", "/etc/initramfs-tools/hooks/pulumi-vfio"];

async function sh(host: Host, script: string, timeoutMs = 300_000): Promise<string> {
    const [r] = await host.run([{ op: "exec", argv: ["sh", "-c", script], timeoutMs }]);
    if (!r.ok) throw new Error(`${script}: exit ${r.code}: ${r.message} ${r.data}`);
    return r.data;
}

/** `fn` over a new SSH connection to `vm`: the old one dies with each reboot. */
async function onFresh<T>(vm: LabVm, fn: (h: SshHost) => Promise<T>): Promise<T> {
    const h = new SshHost(vm.connection);
    try {
        return await fn(h);
    } finally {
        await h.close();
    }
}

labDescribe("BootConfig through GRUB on the lab kernel", () => {
    let vm: LabVm;
    let host: SshHost;
    let plugin: PluginProcess;
    let engine: Engine;
    let grubCfgBefore = "";
    const decl = (inputs: Record<string, unknown>): ResourceDecl => ({ name: "boot", kind: "bootConfig", type: TYPE, inputs: { ...inputs, connection: vm.connection } });
    const wanted = { kernelParameters: ["intel_iommu=on", "iommu=pt"], earlyBinding: [GPU, AUDIO], reboot: "ifNeeded", rebootTimeout: 900 };
    const fresh = <T>(fn: (h: SshHost) => Promise<T>) => onFresh(vm, fn);

    beforeAll(async () => {
        vm = await bootLab({ boot: "grub", log: (m) => console.log(`[boot lab] ${m}`) });
        host = new SshHost(vm.connection);
        // The image's first grub.cfg is hand-written; the host's own is what update-grub makes of /etc/default/grub.
        await sh(host, "update-grub 2>&1");
        grubCfgBefore = await sh(host, "cat /boot/grub/grub.cfg");
        plugin = await PluginProcess.start();
        engine = new Engine(plugin);
    }, 900_000);
    afterAll(async () => {
        await plugin?.stop();
        await host?.close();
        await vm?.stop();
    }, 120_000);

    test("booted through GRUB, without intel_iommu=on iommu=pt: the host a user starts from", async () => {
        const cmdline = await sh(host, "cat /proc/cmdline");
        // The image's first grub.cfg entry (update-grub's own takes effect from the next boot on).
        expect(cmdline).toMatch(/^BOOT_IMAGE=\/boot\/vmlinuz-\S+ root=\/dev\/vda ro console=ttyS0 net\.ifnames=0 panic=-1\n$/);
        expect(grubCfgBefore).toMatch(/linux\s+\/boot\/vmlinuz-\S+ root=UUID=\S+ ro\s+console=ttyS0 net\.ifnames=0 panic=-1\s*\n/);
        expect(cmdline).not.toMatch(/intel_iommu|iommu=pt/);
    });

    test("preview shows every line that changes and the reboot, and changes nothing", async () => {
        const [p] = await engine.preview([decl(wanted)]);
        const plan: string[] = p.inputs!.plan;
        expect(plan).toContain(`${DROPIN}: + GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT intel_iommu=on iommu=pt"`);
        expect(plan.some((l) => /^\/boot\/grub\/grub\.cfg \(regenerated\): \+ root=UUID=\S+ ro console=ttyS0 net\.ifnames=0 panic=-1 intel_iommu=on iommu=pt$/.test(l))).toBe(true);
        expect(plan).toContain("/etc/modprobe.d/pulumi-vfio.conf: + softdep bochs pre: vfio_pci");
        expect(plan).toContain("/etc/modprobe.d/pulumi-vfio.conf: + softdep snd_hda_intel pre: vfio_pci");
        expect(plan).toContain("run: update-initramfs -u -k all");
        expect(plan.find((l) => l.startsWith("reboot needed"))).toMatch(/^reboot needed \(pulumi up reboots the host\): running kernel: intel_iommu=on missing/);
        expect(await sh(host, "cat /boot/grub/grub.cfg")).toBe(grubCfgBefore);
        expect(await sh(host, `ls ${OURS.join(" ")} 2>/dev/null || true`)).toBe("");
    });

    test("up writes, regenerates, reboots through GRUB and verifies: the pair is on vfio-pci from boot, bochs-drm never bound it", async () => {
        const steps = await engine.up([decl(wanted)]);
        expect(steps.map((s) => s.op)).toEqual(["create"]);
        const outs = engine.get("boot")!.outputs;
        expect(outs).toMatchObject({ loader: "grub", initramfs: "initramfs-tools", pendingReboot: false, hostModules: ["bochs", "snd_hda_intel"] });
        expect(outs.running).toEqual(expect.arrayContaining(["intel_iommu=on", "iommu=pt"]));

        await fresh(async (h) => {
            expect(await sh(h, "cat /proc/cmdline")).toMatch(/ intel_iommu=on iommu=pt\n$/);
            expect(Number((await sh(h, "ls /sys/kernel/iommu_groups | wc -l")).trim())).toBeGreaterThan(0);
            expect(await sh(h, `for d in ${GPU} ${AUDIO} 0000:00:01.0; do basename "$(readlink /sys/bus/pci/devices/$d/driver)"; done`)).toBe("vfio-pci\nvfio-pci\nbochs-drm\n");
            expect(await sh(h, `cat /sys/bus/pci/devices/${GPU}/driver_override`)).toBe("vfio-pci\n");
            // The kernel's log of this boot: bochs-drm initialized the console GPU only.
            const log = await sh(h, "dmesg");
            expect(log).toMatch(/bochs-drm 0000:00:01\.0/);
            expect(log).not.toMatch(/bochs-drm 0000:01:00\.0/);
        });
    }, 1_500_000);

    test("a failing regeneration puts every file back and names the command and what it printed", async () => {
        const before = await fresh((h) => sh(h, `cat ${DROPIN} /boot/grub/grub.cfg`));
        // update-grub fails once (then puts itself back, so the restore's own regeneration runs the real one).
        await fresh((h) =>
            sh(
                h,
                "mv /usr/sbin/update-grub /usr/sbin/update-grub.real && printf '#!/bin/sh\\necho \"grub-probe: error: lab fault: cannot find a GRUB drive for /dev/vda\" >&2\\nmv /usr/sbin/update-grub.real /usr/sbin/update-grub\\nexit 1\\n' > /usr/sbin/update-grub && chmod 755 /usr/sbin/update-grub",
            ),
        );
        const err = await engine
            .up([decl({ ...wanted, kernelParameters: [...wanted.kernelParameters, "kvm.ignore_msrs=1"], reboot: "never" })])
            .catch((e) => e)
            .finally(() => fresh((h) => sh(h, "if [ -e /usr/sbin/update-grub.real ]; then mv /usr/sbin/update-grub.real /usr/sbin/update-grub; fi")));
        expect(err).toBeInstanceOf(Error);
        expect(err.message).toMatch(/boot configuration not applied: `\/usr\/sbin\/update-grub` failed \(exit 1\): grub-probe: error: lab fault: cannot find a GRUB drive for \/dev\/vda\. Every file was put back as it was \(\/etc\/default\/grub\.d\/zz-pulumi-vfio\.cfg\) and regenerated\./);
        expect(await fresh((h) => sh(h, `cat ${DROPIN} /boot/grub/grub.cfg`))).toBe(before);
    }, 600_000);

    test("destroy and a reboot give the host its own boot back: grub.cfg byte-equal, bochs-drm and snd_hda_intel back", async () => {
        expect((await engine.destroy()).map((s) => s.op)).toEqual(["delete"]);
        await fresh(async (h) => {
            expect(await sh(h, "cat /boot/grub/grub.cfg")).toBe(grubCfgBefore);
            expect(await sh(h, `ls ${OURS.join(" ")} 2>/dev/null || true`)).toBe("");
        });
        await vm.reboot({ timeoutMs: 900_000 });
        await fresh(async (h) => {
            expect(await sh(h, "cat /proc/cmdline")).not.toMatch(/intel_iommu/);
            expect(await sh(h, `for d in ${GPU} ${AUDIO}; do basename "$(readlink /sys/bus/pci/devices/$d/driver)"; done`)).toBe("bochs-drm\nsnd_hda_intel\n");
        });
    }, 1_200_000);
});

labDescribe("BootConfig through systemd-boot on the lab kernel", () => {
    const CMDLINE = "/etc/kernel/cmdline";
    const MACHINE_ID = "4c41427066696f6c61626d616368696e";
    let vm: LabVm;
    let host: SshHost;
    let plugin: PluginProcess;
    let engine: Engine;
    let kver = "";
    let entry = "";
    let before = "";
    const decl = (inputs: Record<string, unknown>): ResourceDecl => ({ name: "boot", kind: "bootConfig", type: TYPE, inputs: { ...inputs, connection: vm.connection } });
    const wanted = { kernelParameters: ["intel_iommu=on", "iommu=pt"], earlyBinding: [GPU, AUDIO] };
    const ours = OURS.filter((p) => p !== DROPIN);
    const bootFiles = () => fresh((h) => sh(h, `cat ${CMDLINE} ${entry}`));
    const fresh = <T>(fn: (h: SshHost) => Promise<T>) => onFresh(vm, fn);

    beforeAll(async () => {
        vm = await bootLab({ boot: "sdboot", log: (m) => console.log(`[sdboot lab] ${m}`) });
        host = new SshHost(vm.connection);
        kver = (await sh(host, "uname -r")).trim();
        entry = `/efi/loader/entries/${MACHINE_ID}-${kver}.conf`;
        // The image's first entry is hand-written; the host's own is what kernel-install makes of /etc/kernel/cmdline.
        await sh(host, `kernel-install add ${kver} /boot/vmlinuz-${kver} /boot/initrd.img-${kver}`);
        before = await sh(host, `cat ${CMDLINE} ${entry}`);
        plugin = await PluginProcess.start();
        engine = new Engine(plugin);
    }, 900_000);
    afterAll(async () => {
        await plugin?.stop();
        await host?.close();
        await vm?.stop();
    }, 120_000);

    test("booted through systemd-boot from its loader entry, without intel_iommu=on: bootctl sees it installed", async () => {
        expect(await sh(host, "cat /proc/cmdline")).toBe(`initrd=\\${MACHINE_ID}\\${kver}\\initrd root=/dev/vda ro console=ttyS0 net.ifnames=0 panic=-1\n`);
        expect(await sh(host, "bootctl is-installed; bootctl status 2>/dev/null | grep -m1 Product:")).toMatch(/^yes\n\s+Product: systemd-boot \d+/);
        expect(before).toContain("options    root=/dev/vda ro console=ttyS0 net.ifnames=0 panic=-1 systemd.machine_id=" + MACHINE_ID + "\n");
    });

    test("preview shows /etc/kernel/cmdline, the entry's options and the regeneration, and changes nothing", async () => {
        const [p] = await engine.preview([decl(wanted)]);
        const plan: string[] = p.inputs!.plan;
        const base = "root=/dev/vda ro console=ttyS0 net.ifnames=0 panic=-1";
        expect(plan).toEqual(
            expect.arrayContaining([
                `${CMDLINE}: - ${base}`,
                `${CMDLINE}: + ${base} intel_iommu=on iommu=pt`,
                `${entry} (regenerated): - options ${base} systemd.machine_id=${MACHINE_ID}`,
                `${entry} (regenerated): + options ${base} intel_iommu=on iommu=pt systemd.machine_id=${MACHINE_ID}`,
                "/etc/modprobe.d/pulumi-vfio.conf: + softdep bochs pre: vfio_pci",
                "run: update-initramfs -u -k all",
            ]),
        );
        // Debian's systemd-boot runs kernel-install from update-initramfs's hook: not a second time.
        expect(plan.filter((l) => l.includes("kernel-install"))).toEqual([]);
        expect(plan.find((l) => l.startsWith("reboot needed"))).toMatch(/^reboot needed \(reboot: never, so reboot by hand\): running kernel: intel_iommu=on missing/);
        expect(await bootFiles()).toBe(before);
        expect(await sh(host, `ls ${ours.join(" ")} 2>/dev/null || true`)).toBe("");
    });

    test("up writes /etc/kernel/cmdline and the early binding, the entry gets the parameters; pendingReboot until a reboot through systemd-boot, then the pair is on vfio-pci from boot", async () => {
        expect((await engine.up([decl(wanted)])).map((s) => s.op)).toEqual(["create"]);
        const outs = engine.get("boot")!.outputs;
        expect(outs).toMatchObject({ loader: "systemd-boot", initramfs: "initramfs-tools", pendingReboot: true, hostModules: ["bochs", "snd_hda_intel"] });
        expect(outs.configured).toEqual(expect.arrayContaining(["intel_iommu=on", "iommu=pt"]));
        expect(await sh(host, `grep '^options' ${entry}`)).toMatch(/ intel_iommu=on iommu=pt systemd\.machine_id=/);

        await host.close();
        await vm.reboot({ timeoutMs: 900_000 });
        await fresh(async (h) => {
            expect(await sh(h, "cat /proc/cmdline")).toMatch(/ panic=-1 intel_iommu=on iommu=pt systemd\.machine_id=\w+\n$/);
            expect(await sh(h, `for d in ${GPU} ${AUDIO} 0000:00:01.0; do basename "$(readlink /sys/bus/pci/devices/$d/driver)"; done`)).toBe("vfio-pci\nvfio-pci\nbochs-drm\n");
            const log = await sh(h, "dmesg");
            expect(log).toMatch(/bochs-drm 0000:00:01\.0/);
            expect(log).not.toMatch(/bochs-drm 0000:01:00\.0/);
        });
        expect((await engine.refresh()).map((s) => s.op)).toEqual(["refresh-drift"]);
        expect(engine.get("boot")!.outputs).toMatchObject({ pendingReboot: false, pending: [] });
    }, 1_200_000);

    test("destroy and a reboot give the host its own boot back: /etc/kernel/cmdline and the entry byte-equal, the host drivers back", async () => {
        expect((await engine.destroy()).map((s) => s.op)).toEqual(["delete"]);
        expect(await bootFiles()).toBe(before);
        expect(await fresh((h) => sh(h, `ls ${ours.join(" ")} 2>/dev/null || true`))).toBe("");
        await vm.reboot({ timeoutMs: 900_000 });
        await fresh(async (h) => {
            expect(await sh(h, "cat /proc/cmdline")).not.toMatch(/intel_iommu/);
            expect(await sh(h, `for d in ${GPU} ${AUDIO}; do basename "$(readlink /sys/bus/pci/devices/$d/driver)"; done`)).toBe("bochs-drm\nsnd_hda_intel\n");
        });
    }, 1_200_000);
});

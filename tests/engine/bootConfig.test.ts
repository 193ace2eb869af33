/**
 * BootConfig through the real dynamic-provider plugin, as the Pulumi engine drives it, against a fake machine with
 * Debian's GRUB and initramfs-tools in a state file: preview shows the lines and changes nothing, up regenerates,
 * refresh after a reboot shows the running kernel with the parameters, destroy gives the boot back.
 */
import { addGrubBoot, reboot } from "../fake/boot";
import { fakeLabKernel } from "../fake/lab";
import { pci } from "../fake/pci";
import { CheckFailedError, Engine, ResourceDecl, fakeMachineSuite } from "./harness";

const TYPE = "pulumi-nodejs:dynamic/vfio:BootConfig";
const fake = fakeMachineSuite(() => addGrubBoot(fakeLabKernel()));
const bootDecl = (inputs: Record<string, unknown>): ResourceDecl => ({ name: "boot", kind: "bootConfig", type: TYPE, inputs });

test("preview → up → reboot → refresh → destroy, through the plugin", async () => {
    const engine = new Engine(fake.plugin);
    const decl = bootDecl({ kernelParameters: ["intel_iommu=on", "iommu=pt"], earlyBinding: ["01:00.0", "01:00.1"] });
    const grubCfg = fake.machine().state.files["/boot/grub/grub.cfg"].data;

    const [p] = await engine.preview([decl]);
    expect(p.inputs!.plan).toContain("/boot/grub/grub.cfg (regenerated): + root=UUID=f00d ro quiet intel_iommu=on iommu=pt");
    expect(fake.machine().state.files["/boot/grub/grub.cfg"].data).toBe(grubCfg);

    expect((await engine.up([decl])).map((s) => s.op)).toEqual(["create"]);
    expect(engine.get("boot")!.outputs).toMatchObject({ loader: "grub", initramfs: "initramfs-tools", pendingReboot: true, earlyBinding: ["0000:01:00.0", "0000:01:00.1"], hostModules: ["bochs", "snd_hda_intel"] });

    fake.edit(reboot);
    await engine.refresh();
    expect(engine.get("boot")!.outputs).toMatchObject({ pendingReboot: false, pending: [] });
    expect(engine.get("boot")!.outputs.running).toEqual(expect.arrayContaining(["intel_iommu=on", "iommu=pt"]));
    expect((await engine.up([decl])).map((s) => s.op)).toEqual(["same"]);

    expect((await engine.destroy()).map((s) => s.op)).toEqual(["delete"]);
    expect(fake.machine().state.files["/boot/grub/grub.cfg"].data).toBe(grubCfg);
    fake.edit(reboot);
    expect(pci(fake.machine()).devices["0000:01:00.0"].driver).toBe("bochs-drm");
});

test("a parameter with a space fails the preview on kernelParameters, naming the item", async () => {
    const err = await new Engine(fake.plugin).preview([bootDecl({ kernelParameters: ["hugepagesz=1G hugepages=4"] })]).catch((e) => e);
    expect(err).toBeInstanceOf(CheckFailedError);
    expect(err.failures).toEqual([{ property: "kernelParameters", reason: expect.stringMatching(/^kernelParameters\[0\]: "hugepagesz=1G hugepages=4" contains white space/) }]);
});

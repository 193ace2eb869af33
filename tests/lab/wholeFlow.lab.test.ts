/**
 * The whole flow on the lab kernel (tests/demo/flow.ts): host.yaml → preview → up → a changed file → up → every
 * entry removed → the host exactly as before, through the root program and the real dynamic-provider plugin over
 * SSH.
 */
import * as path from "path";
import { KNOWN_LEFTOVERS, compareSnapshots, removeKnownLeftovers, runWholeFlow } from "../demo/flow";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();

labDescribe("the whole flow on the lab kernel", () => {
    test("preview, up, change, up, remove: the host ends exactly as it began", async () => {
        const lines: string[] = [];
        const run = await runWholeFlow(lab!, { main: path.resolve(__dirname, "..", "..", "program", "index.ts"), log: (l) => lines.push(l) });
        console.log(lines.join("\n"));
        const ops = (name: string) => run.phases.find((p) => p.name.startsWith(name))!.steps.map((s) => `${s.urn.split("::").pop()} ${s.op}`);

        // The preview lists every resource and the driver of every device that will move, and changes nothing.
        expect(ops("preview (nothing")).toEqual(["lab-gpu create", "lab-nvme create", "lab-nvme.vf0 create", "lab-serial create", "lab-nested create"]);
        const preview = run.phases[0].text;
        expect(preview).toContain("0000:01:00.0 (VGA controller 1234:1111): bochs-drm → vfio-pci");
        expect(preview).toContain("0000:01:00.1 (Audio device 8086:2668): snd_hda_intel → vfio-pci");
        expect(run.observed.afterPreview.unchanged).toBe("true");

        expect(ops("up")).toEqual(["lab-gpu create", "lab-nvme create", "lab-nvme.vf0 create", "lab-serial create", "lab-nested create"]);
        expect(run.observed.afterUp).toMatchObject({ gpu: "vfio-pci", audio: "vfio-pci", numvfs: "2", vf0: "vfio-pci", mdev: "mtty-1", shm: String(32 * 1024 * 1024) });
        expect(run.observed.afterUp.qemu).toMatch(/^\d+$/);
        expect(run.observed.afterUp.holds).toContain("/dev/shm/looking-glass");
        expect(ops("up again")).toEqual(["lab-gpu same", "lab-nvme same", "lab-nvme.vf0 same", "lab-serial same", "lab-nested same"]);

        // Another mdev type replaces the mdev; more memory restarts the VM with the new command line.
        expect(ops("preview of the change")).toEqual(["lab-gpu same", "lab-nvme same", "lab-nvme.vf0 same", "lab-serial replace", "lab-nested update"]);
        expect(ops("up with the change")).toEqual(["lab-gpu same", "lab-nvme same", "lab-nvme.vf0 same", "lab-serial replace", "lab-nested update"]);
        expect(run.observed.afterChange).toMatchObject({ gpu: "vfio-pci", mdev: "mtty-2" });
        expect(run.observed.afterChange.memory).toContain("384");
        expect(run.observed.afterChange.qemu).not.toBe(run.observed.afterUp.qemu);

        // Removing every entry deletes the VM first, then its devices; the host is as it was.
        expect(ops("up: everything removed")).toEqual(["lab-nested delete", "lab-serial delete", "lab-nvme.vf0 delete", "lab-nvme delete", "lab-gpu delete"]);
        // Compared line by line over a full snapshot (every PCI device, SR-IOV, mdevs and their capacity, /dev/vfio,
        // /dev/shm, QEMU processes, pulumi-vfio's files): nothing missing, nothing extra but the known leftovers.
        const { extra, missing } = compareSnapshots(run.before, run.after);
        await removeKnownLeftovers(lab!, extra);
        expect(missing).toEqual([]);
        expect(extra.filter((l) => !KNOWN_LEFTOVERS.includes(l))).toEqual([]);
    });
});

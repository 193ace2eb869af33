/**
 * `npm run demo`: the whole flow on a real kernel for a newcomer. Boots the lab host (a QEMU guest with an emulated
 * IOMMU, built once by `npm run lab:build`), writes a host.yaml for it, shows what `pulumi preview` would, converges
 * it through the real dynamic-provider plugin over SSH, changes the file and converges again, removes everything,
 * and compares the host with how it began. Stops the lab VM whatever happens. Takes 2–4 minutes on 2 cores (TCG).
 */
import * as path from "path";
import { bootLab, findLabImage } from "../lab/lab";
import { KNOWN_LEFTOVERS, compareSnapshots, removeKnownLeftovers, runWholeFlow } from "./flow";

async function main(): Promise<number> {
    const image = findLabImage();
    if ("skip" in image) {
        console.error(`The lab image is not built: ${image.skip}\nBuild it once with \`npm run lab:build\` (~3 minutes, needs debootstrap and qemu-system-x86).`);
        return 2;
    }
    const t0 = Date.now();
    console.log("booting the lab host (a q35 guest with intel-iommu; a GPU + HDMI audio in one IOMMU group, an SR-IOV NVMe, mdev samples)...");
    const lab = await bootLab({ log: (m) => console.log(`  [lab] ${m}`) });
    try {
        console.log(`lab host up in ${(lab.bootMs / 1000).toFixed(1)} s (${lab.accel}), ssh root@127.0.0.1:${lab.connection.port}`);
        const run = await runWholeFlow(lab, { main: path.resolve(__dirname, "..", "..", "program", "index.js"), log: (l) => console.log(l) });
        const { extra, missing } = compareSnapshots(run.before, run.after);
        const unexpected = extra.filter((l) => !KNOWN_LEFTOVERS.includes(l));
        const same = !missing.length && !unexpected.length;
        console.log(`\n== the host after removing everything: ${same ? "as before (full snapshot of sysfs, /dev/vfio, /dev/shm, QEMU and pulumi-vfio's files compared)" : "NOT as before"}`);
        for (const l of missing) console.log(`  - ${l}`);
        for (const l of extra) console.log(`  + ${l}${KNOWN_LEFTOVERS.includes(l) ? "   (known: PassthroughVm's delete leaves it; removed now)" : ""}`);
        await removeKnownLeftovers(lab, extra);
        console.log(`\ntimings: ${run.phases.map((p) => `${p.name} ${(p.ms / 1000).toFixed(1)} s`).join("; ")}; total ${((Date.now() - t0) / 1000).toFixed(0)} s`);
        return same ? 0 : 1;
    } finally {
        await lab.stop();
    }
}

main().then(
    (code) => (process.exitCode = code),
    (e) => {
        console.error(`demo failed: ${(e as Error).stack ?? e}`);
        process.exitCode = 1;
    },
);

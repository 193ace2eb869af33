// `npm run lab:smoke`: boots the lab VM, prints what a passthrough host would show (IOMMU groups, mdev types,
// SR-IOV capacity), powers it off. Exit 0 only if the GPU pair shares a group, the NVMe offers VFs and an
// mdev parent exists; 2 if the lab image is not built.
import { bootLab, findLabImage, LabVm } from "./lab";

interface PciDevice {
    group: number;
    address: string;
    klass: string;
    vendor: string;
    device: string;
    driver: string;
    bootVga: string;
}

// One ssh round trip for everything: each ssh costs a key exchange on an emulated CPU.
const PROBE = String.raw`
for d in /sys/kernel/iommu_groups/*/devices/*; do
  g=$(basename "$(dirname "$(dirname "$d")")")
  drv=-; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
  bv=-; [ -e "$d/boot_vga" ] && bv=$(cat "$d/boot_vga")
  echo "pci $g $(basename "$d") $(cat "$d/class") $(cat "$d/vendor") $(cat "$d/device") $drv $bv"
done
for t in /sys/class/mdev_bus/*/mdev_supported_types/*; do
  [ -d "$t" ] || continue
  echo "mdev $(basename "$(dirname "$(dirname "$t")")") $(basename "$t") $(cat "$t/available_instances") $(cat "$t/device_api") $(cat "$t/name" 2>/dev/null | tr ' ' _)"
done
for p in /sys/class/mdev_bus/*; do [ -e "$p" ] && echo "mdevparent $(basename "$p")"; done
for d in /sys/bus/pci/devices/*; do
  [ -e "$d/sriov_totalvfs" ] && echo "sriov $(basename "$d") $(cat "$d/sriov_totalvfs") $(cat "$d/sriov_numvfs")"
done
echo "kernel $(uname -r)"
echo "cmdline $(cat /proc/cmdline)"
`;

async function main(): Promise<number> {
    const t0 = Date.now();
    const img = findLabImage();
    if ("skip" in img) {
        console.error(`lab:smoke: ${img.skip}`);
        return 2;
    }
    let vm: LabVm | undefined;
    try {
        vm = await bootLab({ log: (m) => console.log(`lab: ${m}`) });
        console.log(`booted in ${(vm.bootMs / 1000).toFixed(1)} s (accel ${vm.accel}, ssh 127.0.0.1:${vm.connection.port})`);
        const r = await vm.ssh(["sh", "-c", PROBE]);
        if (r.code !== 0) throw new Error(`probe failed (${r.code}): ${r.stderr}`);
        const lines = r.stdout.trim().split("\n").map((l) => l.split(" "));
        const pci: PciDevice[] = lines
            .filter((f) => f[0] === "pci")
            .map((f) => ({ group: +f[1], address: f[2], klass: f[3], vendor: f[4], device: f[5], driver: f[6], bootVga: f[7] }))
            .sort((a, b) => a.group - b.group || a.address.localeCompare(b.address));

        for (const f of lines.filter((f) => f[0] === "kernel" || f[0] === "cmdline")) console.log(`${f[0]}: ${f.slice(1).join(" ")}`);
        console.log("\nIOMMU groups:");
        console.log("  group  address        class     vendor:device  driver           boot_vga");
        for (const d of pci) {
            console.log(
                `  ${String(d.group).padStart(5)}  ${d.address}  ${d.klass}  ${d.vendor.slice(2)}:${d.device.slice(2)}      ${d.driver.padEnd(16)} ${d.bootVga}`,
            );
        }
        console.log("\nmdev types:");
        const mdev = lines.filter((f) => f[0] === "mdev");
        for (const f of mdev) console.log(`  ${f[1]}/${f[2]}  available_instances=${f[3]}  device_api=${f[4]}  name=${f[5] ?? ""}`);
        const parents = lines.filter((f) => f[0] === "mdevparent").map((f) => f[1]);
        console.log(`  parents: ${parents.join(", ") || "(none)"}`);
        console.log("\nSR-IOV:");
        const sriov = lines.filter((f) => f[0] === "sriov");
        for (const f of sriov) console.log(`  ${f[1]}  sriov_totalvfs=${f[2]}  sriov_numvfs=${f[3]}`);

        const group = (a: string) => pci.find((d) => d.address === a)?.group;
        const nvme = pci.find((d) => d.klass === "0x010802");
        const nvmeVfs = nvme ? +(sriov.find((f) => f[1] === nvme.address)?.[2] ?? 0) : 0;
        const checks: [string, boolean][] = [
            ["0000:01:00.0 and 0000:01:00.1 share an IOMMU group", group("0000:01:00.0") !== undefined && group("0000:01:00.0") === group("0000:01:00.1")],
            [`the NVMe offers VFs (sriov_totalvfs=${nvmeVfs})`, nvmeVfs > 0],
            [`an mdev parent exists under /sys/class/mdev_bus (${parents.join(", ")})`, parents.length > 0],
        ];
        console.log("");
        for (const [what, ok] of checks) console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
        const t1 = Date.now();
        await vm.stop();
        vm = undefined;
        console.log(`\nstopped in ${((Date.now() - t1) / 1000).toFixed(1)} s; total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        return checks.every(([, ok]) => ok) ? 0 : 1;
    } finally {
        if (vm) await vm.stop();
    }
}

main().then(
    (code) => process.exit(code),
    (e) => {
        console.error(`lab:smoke failed: ${(e as Error).stack ?? e}`);
        process.exit(1);
    },
);

/**
 * `npm run bench`: boots the lab VM once, runs every benchmark in it, prints medians and ratios (and JSON with
 * --json). A benchmark, not a test: nothing here fails on a slow machine, only on a wrong result.
 */
import { bootLab } from "../lab/lab";
import { benchIommu } from "./iommu.bench";
import { benchMdev } from "./mdev.bench";
import { benchVm } from "./vm.bench";
import { BenchRow } from "./types";

function table(rows: BenchRow[]): string {
    const lines = rows.map((r) => {
        const ratio = r.ratio !== undefined ? `${r.ratio.toFixed(2)}× ${r.baseline}${r.target ? ` (target ≤ ${r.target}×)` : ""}` : "";
        const trips = r.roundTrips !== undefined ? `${r.roundTrips} round trips` : "";
        return `${r.name.padEnd(62)} ${r.medianMs.toFixed(1).padStart(9)} ms  ${ratio}${ratio && trips ? "; " : ""}${trips}`;
    });
    return lines.join("\n");
}

async function main(): Promise<void> {
    const iterations = Number(process.env.BENCH_ITERATIONS ?? 7);
    const vm = await bootLab({ log: (m) => console.error(`[lab] ${m}`) });
    try {
        console.error(`[bench] lab up (${vm.accel}); ${iterations} interleaved iterations per contender`);
        const rows: BenchRow[] = [];
        rows.push(...(await benchIommu(vm, iterations)));
        rows.push(...(await benchMdev(vm, iterations)));
        rows.push(...(await benchVm(vm, Math.min(iterations, 5))));
        if (process.argv.includes("--json")) console.log(JSON.stringify(rows, null, 2));
        else console.log(table(rows));
    } finally {
        await vm.stop();
    }
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});

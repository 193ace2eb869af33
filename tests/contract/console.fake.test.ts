import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { consoleState } from "../fake/console";
import { consoleContract } from "./console.contract";

const k = fakeLabKernel();
const host = new FakeHost(k);
consoleContract(describe, () => ({
    host,
    addUnit: async (unit) => void (consoleState(k).units[unit] = false),
    dropUnit: async (unit) => void delete consoleState(k).units[unit],
}));

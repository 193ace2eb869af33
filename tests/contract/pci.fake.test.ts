import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { pciContract } from "./pci.contract";

const host = new FakeHost(fakeLabKernel());
pciContract(describe, () => ({ host }));

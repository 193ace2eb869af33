import { FakeHost } from "../../provider/host/fake/host";
import { fakeLabKernel } from "../../provider/host/fake/lab";
import { pciContract } from "./pci.contract";

const host = new FakeHost(fakeLabKernel());
pciContract(describe, () => ({ host }));

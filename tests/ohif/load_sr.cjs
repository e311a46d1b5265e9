// Loads one of our SRs the way OHIF 3.13 does and prints what OHIF found, as JSON.
//
// Real code exercised: dcmjs (read + naturalize, as OHIF's local/DICOMweb sources do), OHIF's
// @ohif/core and @ohif/extension-cornerstone-dicom-sr (its SOP class handler: display set, load,
// measurement extraction, isRehydratable, adding the read-only SR annotations to Cornerstone3D
// tools' annotation state, and hydrateStructuredReport, which OHIF runs when the user "tracks" the
// SR) and @cornerstonejs/adapters' MeasurementReport.generateToolState (also called on its own).
// Stubbed: React/UI packages, i18n, the cornerstone extension, and the app's services (display
// set, measurement and customization services: plain recorders; no viewport, no rendering).
//
// usage: node --experimental-require-module load_sr.cjs SR.dcm IMAGE.dcm...
'use strict';
const fs = require('fs');
const { JSDOM } = require('jsdom');

const dom = new JSDOM('<!doctype html><html><body></body></html>', { url: 'http://localhost/', pretendToBeVisual: true });
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.self = globalThis;
for (const k of ['navigator', 'HTMLElement', 'HTMLDivElement', 'Element', 'Node', 'localStorage', 'CustomEvent', 'requestAnimationFrame']) {
  if (!(k in globalThis)) globalThis[k] = dom.window[k];
}
// Events dispatched on jsdom elements must be jsdom's own (node 20 has its own CustomEvent).
globalThis.CustomEvent = dom.window.CustomEvent;
globalThis.Event = dom.window.Event;

// UI-only modules the SR extension imports at load time; none of them is on the parsing path.
const Module = require('module');
const STUBS = new Set(['@ohif/ui-next', '@ohif/ui', '@ohif/i18n', '@ohif/extension-cornerstone',
  '@ohif/core/src/contextProviders/SystemProvider', 'react', 'react-dom']);
function stub() {
  return new Proxy(function () {}, {
    get: (_t, k) => (k === '__esModule' ? true : k === 'prototype' ? {} : k === 't' ? (s) => s : stub()),
    apply: () => stub(),
    construct: () => ({}),
  });
}
const load = Module._load;
Module._load = function (request, ...rest) {
  return STUBS.has(request) ? stub() : load.call(this, request, ...rest);
};

const dcmjs = require('dcmjs');
const ohifCore = require('@ohif/core');
const cornerstone = require('@cornerstonejs/core');
const cornerstoneTools = require('@cornerstonejs/tools');
const adapters = require('@cornerstonejs/adapters');
const srExtension = require('@ohif/extension-cornerstone-dicom-sr');

const log = { warnings: [], errors: [] };
for (const level of ['warn', 'error']) {
  console[level] = (...args) => log[level === 'warn' ? 'warnings' : 'errors'].push(args.map(String).join(' ').slice(0, 300));
}
console.log = () => {};
console.info = () => {};
console.debug = () => {};

function readDicom(path) {
  const buffer = fs.readFileSync(path);
  const dict = dcmjs.data.DicomMessage.readFile(buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.length));
  return dcmjs.data.DicomMetaDictionary.naturalizeDataset(dict.dict);
}

const [srPath, ...imagePaths] = process.argv.slice(2);
const sr = readDicom(srPath);
const images = imagePaths.map(readDicom);

// One image display set per source instance, with wadors image ids as OHIF's DICOMweb source makes them.
const imageIdOf = (img, frame) =>
  `wadors:http://localhost/dicom-web/studies/${img.StudyInstanceUID}/series/${img.SeriesInstanceUID}/instances/${img.SOPInstanceUID}/frames/${frame}`;
const planes = new Map();
const imageDisplaySets = images.map((img, i) => {
  const frames = Number(img.NumberOfFrames || 1);
  const imageIds = [];
  for (let f = 1; f <= frames; f++) {
    const id = imageIdOf(img, f);
    imageIds.push(id);
    planes.set(id, {
      frameOfReferenceUID: img.FrameOfReferenceUID || `fake-for-${img.SOPInstanceUID}`,
      rows: img.Rows, columns: img.Columns,
      rowCosines: [1, 0, 0], columnCosines: [0, 1, 0], imagePositionPatient: [0, 0, 0],
      rowPixelSpacing: 1, columnPixelSpacing: 1, imageOrientationPatient: [1, 0, 0, 0, 1, 0],
    });
  }
  return { displaySetInstanceUID: `image-ds-${i}`, SOPClassUID: img.SOPClassUID, images: [img], imageIds, unsupported: false };
});
const instances = new Map();
images.forEach((img, i) => imageDisplaySets[i].imageIds.forEach((id) => instances.set(id, img)));
cornerstone.metaData.addProvider((type, imageId) => {
  if (type === 'imagePlaneModule') return planes.get(imageId);
  if (type === 'instance' && instances.has(imageId)) {
    return { ...instances.get(imageId), FrameOfReferenceUID: planes.get(imageId).frameOfReferenceUID };
  }
  return undefined;
}, 10000);

// The services OHIF's app would pass in; only what the SR handler and hydration touch. The
// measurement service records what OHIF's hydrateStructuredReport hands it.
const PLANAR_FREEHAND_MAPPING = { annotationType: 'PlanarFreehandROI', toMeasurementSchema: () => ({}) };
const srDisplaySets = [];
const rawMeasurements = [];
const commands = [];
const servicesManager = {
  services: {
    displaySetService: {
      activeDisplaySets: imageDisplaySets,
      EVENTS: { DISPLAY_SETS_ADDED: 'added' },
      subscribe: () => ({ unsubscribe() {} }),
      getDisplaySetByUID: (uid) => [...srDisplaySets, ...imageDisplaySets].find((d) => d.displaySetInstanceUID === uid),
      getDisplaySetsBy: (test) => imageDisplaySets.filter(test),
    },
    measurementService: {
      getSourceMappings: () => [PLANAR_FREEHAND_MAPPING],
      getSource: () => ({ name: 'Cornerstone3DTools', version: '0.1' }),
      addRawMeasurement: (_source, toolName, { annotation }) => {
        rawMeasurements.push({ toolName, annotation });
        return `measurement-${rawMeasurements.length}`;
      },
    },
    customizationService: { getCustomization: (name) => (name === 'codingValues' ? {} : undefined) },
    uiNotificationService: { show: (n) => log.warnings.push(`notification: ${n.message}`) },
  },
};
const commandsManager = { runCommand: (name, args) => commands.push({ name, args }) };
const dataSource = {
  getImageIdsForDisplaySet: (ds) => ds.imageIds,
  retrieve: { bulkDataURI: async () => new ArrayBuffer(0) },
};
const extensionManager = { getDataSources: () => [dataSource], getActiveDataSource: () => [dataSource] };

async function main() {
  const out = { sopClassHandler: null, displaySet: null, measurements: [], annotations: [], hydration: {}, ...log };
  const handlers = srExtension.default.getSopClassHandlerModule({ servicesManager, extensionManager });
  const handler = handlers.find((h) => h.sopClassUids.includes(sr.SOPClassUID));
  out.sopClassHandler = handler ? handler.name : null;
  ohifCore.DicomMetadataStore.addInstances([sr], true);
  const [displaySet] = handler.getDisplaySetsFromSeries([sr]);
  srDisplaySets.push(displaySet);
  await displaySet.load();
  out.displaySet = {
    isImagingMeasurementReport: displaySet.isImagingMeasurementReport,
    isRehydratable: displaySet.isRehydratable,
    referencedImages: displaySet.referencedImages.length,
  };
  out.measurements = displaySet.measurements.map((m) => ({
    TrackingIdentifier: m.TrackingIdentifier,
    loaded: m.loaded,
    graphicType: m.graphicType,
    pointsLength: m.pointsLength,
    ReferencedSOPInstanceUID: m.ReferencedSOPInstanceUID || null,
    frameNumber: m.frameNumber || null,
    labels: m.labels,
  }));
  out.annotations = cornerstoneTools.annotation.state.getAllAnnotations().map((a) => ({
    toolName: a.metadata.toolName,
    referencedImageId: a.metadata.referencedImageId,
    label: a.data.label || null,
    labels: a.data.labels || [],
    points: (a.data.handles.points || []).length,
  }));

  // What OHIF's hydrateStructuredReport does first: the adapters turn the SR into tool state.
  const map = {};
  for (const ds of imageDisplaySets) {
    for (const id of ds.imageIds) {
      const { SOPInstanceUID, frameNumber } = ohifCore.classes.MetadataProvider.getUIDsFromImageID(id);
      map[`${SOPInstanceUID}:${frameNumber || 1}`] = id;
    }
  }
  const { MeasurementReport } = adapters.adaptersSR.Cornerstone3D;
  const hasMeasurements = (sr.ContentSequence || []).some((i) => i.ConceptNameCodeSequence?.[0]?.CodeValue === '126010');
  const state = hasMeasurements ? MeasurementReport.generateToolState(sr, map, cornerstone.metaData) : {};
  for (const [tool, items] of Object.entries(state)) {
    out.hydration[tool] = items.map((m) => ({
      label: m.annotation.data.label || null,
      description: m.description || null,
      finding: m.finding ? m.finding.CodeMeaning : null,
      closed: m.annotation.data.contour ? m.annotation.data.contour.closed : null,
      polylinePoints: m.annotation.data.contour ? m.annotation.data.contour.polyline.length : 0,
      referencedImageId: m.annotation.metadata.referencedImageId || null,
      sopInstanceUid: m.sopInstanceUid || null,
    }));
  }
  // OHIF's own hydration (what "track measurements" runs), fed to the recording measurement service.
  if (displaySet.isRehydratable) {
    srExtension.hydrateStructuredReport({ servicesManager, extensionManager, commandsManager }, displaySet.displaySetInstanceUID);
  }
  out.ohifHydration = {
    isHydrated: Boolean(displaySet.isHydrated),
    measurements: rawMeasurements.map(({ toolName, annotation }) => ({
      toolName,
      label: annotation.data.label || null,
      finding: annotation.data.finding ? annotation.data.finding.text : null,
      referencedImageId: annotation.metadata.referencedImageId || null,
      points: annotation.data.contour ? annotation.data.contour.polyline.length : 0,
    })),
    commands: commands.map((c) => c.name),
  };
  out.warnings = log.warnings;
  out.errors = log.errors;
  process.stdout.write(JSON.stringify(out, null, 1));
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ fatal: String(e && e.stack ? e.stack : e), ...log }));
  process.exitCode = 1;
});

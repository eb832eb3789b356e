//! The Vulkan instance: loads libvulkan at run time, optionally enables the Khronos validation layer with a
//! debug-utils messenger that counts errors and keeps the first messages.
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ash::vk;

use crate::error::Error;

const VALIDATION_LAYER: &CStr = c"VK_LAYER_KHRONOS_validation";
/// How many ERROR and WARNING message texts are kept.
const KEEP_MESSAGES: usize = 20;

/// What the debug messenger has seen. Heap-pinned (boxed) for as long as the instance lives: its address
/// is the messenger's user data.
#[derive(Default)]
pub(crate) struct DebugState {
    errors: AtomicU64,
    messages: Mutex<Vec<String>>,
}

impl DebugState {
    /// The number of ERROR messages and the first kept ERROR/WARNING texts.
    pub(crate) fn snapshot(&self) -> (u64, Vec<String>) {
        let messages = self.messages.lock().map(|m| m.clone()).unwrap_or_default();
        (self.errors.load(Ordering::Relaxed), messages)
    }
}

struct Debug {
    loader: ash::ext::debug_utils::Instance,
    messenger: vk::DebugUtilsMessengerEXT,
}

/// The loaded library and instance; destroys the messenger and instance on drop.
pub(crate) struct InstanceCtx {
    pub(crate) entry: ash::Entry,
    pub(crate) instance: ash::Instance,
    /// Whether `VK_KHR_portability_enumeration` is on (then devices may need `VK_KHR_portability_subset`).
    pub(crate) portability: bool,
    debug: Option<Debug>,
    /// Must outlive the messenger and the instance (the messenger chained at instance creation): declared
    /// after them so that it drops after `Drop::drop` destroyed them.
    state: Option<Box<DebugState>>,
}

unsafe extern "system" fn on_message(
    severity: vk::DebugUtilsMessageSeverityFlagsEXT,
    _types: vk::DebugUtilsMessageTypeFlagsEXT,
    data: *const vk::DebugUtilsMessengerCallbackDataEXT<'_>,
    user: *mut c_void,
) -> vk::Bool32 {
    // SAFETY: `user` is the address of the boxed `DebugState` that outlives the messenger; `data` is
    // valid for the duration of the callback per the Vulkan spec.
    let (Some(state), Some(data)) =
        (unsafe { (user as *const DebugState).as_ref() }, unsafe { data.as_ref() })
    else {
        return vk::FALSE;
    };
    let error = severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::ERROR);
    if error {
        state.errors.fetch_add(1, Ordering::Relaxed);
    }
    if error || severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::WARNING) {
        if let Ok(mut kept) = state.messages.lock() {
            if kept.len() < KEEP_MESSAGES {
                // SAFETY: the strings are NUL-terminated or null per the spec.
                let msg = unsafe { data.message_as_c_str() }
                    .map(CStr::to_string_lossy)
                    .unwrap_or_default();
                let id = unsafe { data.message_id_name_as_c_str() }
                    .map(CStr::to_string_lossy)
                    .unwrap_or_default();
                kept.push(format!("[{}] {id}: {msg}", if error { "ERROR" } else { "WARNING" }));
            }
        }
    }
    vk::FALSE
}

fn has_layer(entry: &ash::Entry, name: &CStr) -> Result<bool, Error> {
    // SAFETY: plain query.
    let layers = unsafe { entry.enumerate_instance_layer_properties() }
        .map_err(Error::vk("vkEnumerateInstanceLayerProperties"))?;
    Ok(layers.iter().any(|l| l.layer_name_as_c_str() == Ok(name)))
}

fn instance_extensions(
    entry: &ash::Entry,
    layer: Option<&CStr>,
) -> Result<Vec<vk::ExtensionProperties>, Error> {
    // SAFETY: plain query.
    unsafe { entry.enumerate_instance_extension_properties(layer) }
        .map_err(Error::vk("vkEnumerateInstanceExtensionProperties"))
}

fn has_extension(list: &[vk::ExtensionProperties], name: &CStr) -> bool {
    list.iter().any(|e| e.extension_name_as_c_str() == Ok(name))
}

impl InstanceCtx {
    /// Load libvulkan and create a Vulkan 1.1 instance, with validation if asked.
    pub(crate) fn new(validation: bool) -> Result<Self, Error> {
        // SAFETY: loading the system's Vulkan loader; its initialisation is trusted like any driver.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| Error::NoVulkan(e.to_string()))?;
        let mut layers: Vec<*const c_char> = Vec::new();
        let mut extensions: Vec<*const c_char> = Vec::new();
        let mut available = instance_extensions(&entry, None)?;
        let state = if validation {
            if !has_layer(&entry, VALIDATION_LAYER)? {
                return Err(Error::NoValidationLayer);
            }
            layers.push(VALIDATION_LAYER.as_ptr());
            available.extend(instance_extensions(&entry, Some(VALIDATION_LAYER))?);
            let debug_utils = ash::ext::debug_utils::NAME;
            if !has_extension(&available, debug_utils) {
                return Err(Error::MissingExtension {
                    extension: "VK_EXT_debug_utils",
                    on: "this Vulkan instance".into(),
                });
            }
            extensions.push(debug_utils.as_ptr());
            Some(Box::<DebugState>::default())
        } else {
            None
        };
        let portability = has_extension(&available, ash::khr::portability_enumeration::NAME);
        let mut flags = vk::InstanceCreateFlags::empty();
        if portability {
            extensions.push(ash::khr::portability_enumeration::NAME.as_ptr());
            flags |= vk::InstanceCreateFlags::ENUMERATE_PORTABILITY_KHR;
        }
        let app = vk::ApplicationInfo::default()
            .application_name(c"kiln")
            .engine_name(c"kiln-vk")
            .api_version(vk::API_VERSION_1_1);
        let user = state
            .as_deref()
            .map_or(std::ptr::null_mut(), |s| s as *const DebugState as *mut c_void);
        let mut chained = messenger_info(user);
        let mut info = vk::InstanceCreateInfo::default()
            .application_info(&app)
            .enabled_layer_names(&layers)
            .enabled_extension_names(&extensions)
            .flags(flags);
        if state.is_some() {
            // Also catch messages from vkCreateInstance / vkDestroyInstance.
            info = info.push_next(&mut chained);
        }
        // SAFETY: every pointer in `info` outlives the call.
        let instance =
            unsafe { entry.create_instance(&info, None) }.map_err(Error::vk("vkCreateInstance"))?;
        let mut ctx = InstanceCtx { entry, instance, portability, debug: None, state };
        if ctx.state.is_some() {
            let loader = ash::ext::debug_utils::Instance::new(&ctx.entry, &ctx.instance);
            // SAFETY: `user` points into `ctx.state`, which lives until after the messenger is destroyed.
            let messenger =
                unsafe { loader.create_debug_utils_messenger(&messenger_info(user), None) }
                    .map_err(Error::vk("vkCreateDebugUtilsMessengerEXT"))?;
            ctx.debug = Some(Debug { loader, messenger });
        }
        Ok(ctx)
    }

    /// Validation counts: ERROR messages and the first kept texts; zeros when validation is off.
    pub(crate) fn validation_messages(&self) -> (u64, Vec<String>) {
        self.state.as_deref().map(DebugState::snapshot).unwrap_or_default()
    }
}

fn messenger_info(user: *mut c_void) -> vk::DebugUtilsMessengerCreateInfoEXT<'static> {
    vk::DebugUtilsMessengerCreateInfoEXT::default()
        .message_severity(
            vk::DebugUtilsMessageSeverityFlagsEXT::ERROR
                | vk::DebugUtilsMessageSeverityFlagsEXT::WARNING,
        )
        .message_type(
            vk::DebugUtilsMessageTypeFlagsEXT::GENERAL
                | vk::DebugUtilsMessageTypeFlagsEXT::VALIDATION
                | vk::DebugUtilsMessageTypeFlagsEXT::PERFORMANCE,
        )
        .pfn_user_callback(Some(on_message))
        .user_data(user)
}

impl Drop for InstanceCtx {
    fn drop(&mut self) {
        // SAFETY: every child object (device included) is destroyed before this context drops.
        unsafe {
            if let Some(d) = self.debug.take() {
                d.loader.destroy_debug_utils_messenger(d.messenger, None);
            }
            self.instance.destroy_instance(None);
        }
    }
}
